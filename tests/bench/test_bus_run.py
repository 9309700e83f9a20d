"""The bus process's peak memory in MB as the target states it (10⁶ bytes, as written_mb is): the
kernel's VmHWM is in KiB, and 500,000 KiB is 512 MB, over the 500 MB target, not 488."""

from __future__ import annotations

import pytest

from bench import bus_run


def test_peak_is_vmhwm_in_megabytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_run, "_proc", lambda path, name: 500_000 if (path, name) == ("/proc/self/status", "VmHWM")
                        else None)
    assert bus_run._peak_mb() == pytest.approx(512.0)


def test_written_and_peak_use_the_same_megabyte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_run, "_proc", lambda path, name: 1_000_000)  # KiB of VmHWM; bytes of write_bytes
    assert bus_run._written_mb() == pytest.approx(1.0)
    assert bus_run._peak_mb() == pytest.approx(1_024.0)


def test_the_real_peak_is_this_process_vmhwm() -> None:
    with open("/proc/self/status", encoding="ascii") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    assert bus_run._peak_mb() == pytest.approx(kib * 1024 / 1e6, rel=0.05)
