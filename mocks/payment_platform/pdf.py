"""A minimal, valid PDF 1.4 receipt written by hand (no PDF library).

One page, the standard Helvetica font (WinAnsi), one content stream, a correct cross-reference
table. Vietnamese diacritics are folded to ASCII for the standard font; the numbers, codes and
amounts are kept exactly.
"""

from __future__ import annotations

import unicodedata

__all__ = ["ascii_fold", "receipt_pdf"]


def ascii_fold(text: str) -> str:
    text = str(text).replace("đ", "d").replace("Đ", "D")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return folded


def _pdf_string(text: str) -> str:
    text = ascii_fold(text)
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def receipt_pdf(title: str, lines: list[tuple[str, str]]) -> bytes:
    """A one-page PDF with ``title`` and ``label: value`` lines."""
    ops = ["BT", "/F1 16 Tf", "72 770 Td", f"{_pdf_string(title)} Tj", "/F1 11 Tf", "0 -30 Td"]
    for label, value in lines:
        ops.append(f"{_pdf_string(f'{label}: {value}')} Tj")
        ops.append("0 -18 Td")
    ops.append("ET")
    stream = ("\n".join(ops) + "\n").encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> "
         b"/Contents 5 0 R >>"),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"endstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode() + b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)
