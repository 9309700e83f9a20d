"""The HTML report opens from a file with no server and shows its charts in headless Chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from lienthong.reports import tasks as report_tasks
from lienthong.reports.render import COLOURS, LATE, ONLINE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
        previous = line
    return width, height, rows


def _rgb(colour: str) -> bytes:
    return bytes.fromhex(colour.lstrip("#"))


@pytest.fixture(scope="module")
def report_file(province, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    report_tasks.run_agreement(province.resolve, run_id="html-1", checks=("dossier_status",), out_dir=out)
    return Path(report_tasks.kpi_report(province.resolve, date_from="2026-11-01", date_to="2026-11-30",
                                        out_dir=out)["html"])


def test_the_html_is_self_contained_with_svg_charts(report_file):
    html = report_file.read_text(encoding="utf-8")
    for chart in ("chart-levels", "chart-days", "chart-on-time", "chart-disagreements"):
        assert re.search(rf'<svg id="{chart}" class="chart"', html), chart
    assert html.count('class="bar level-full"') > 3 and 'class="bar day-online"' in html
    assert 'class="line-processed"' in html and 'class="bar late"' in html
    assert 'class="bar disagreement"' in html
    # nothing to fetch: no script, no stylesheet or image link, no URL but the SVG namespace
    assert "<script" not in html and "<link" not in html and "<img" not in html
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_headless_chromium_renders_the_charts(report_file, tmp_path):
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,2600", "--force-device-scale-factor=0.5", f"--screenshot={shot}", report_file.as_uri()],
                   check=True, timeout=60, capture_output=True)
    data = shot.read_bytes()
    assert len(data) > 20_000
    width, height, rows = png_pixels(data)
    assert (width, height) == (600, 1300)
    counts = {name: sum(1 for row in rows for i in range(0, len(row), 3) if row[i:i + 3] == _rgb(colour))
              for name, colour in {"full": COLOURS["full"], "partial": COLOURS["partial"], "online": ONLINE,
                                   "late": LATE}.items()}
    # each chart's bars are on the screen, not just in the file
    assert all(n > 200 for n in counts.values()), counts
