"""A scriptable peer for connector tests: a real HTTP server on 127.0.0.1 (``localhost`` stands
for "another host"), so the wire is real: requests' redirect handling, header validation and
socket timeouts all take part. The ``peers`` fixture (``tests/connectors/conftest.py``) makes them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["JSON", "Handler", "Peer", "answer", "trickle"]

JSON = "application/json; charset=utf-8"

Handler = Callable[[BaseHTTPRequestHandler, bytes], None]


class Peer:
    """``handle(request, body)`` answers each request; every request is kept as
    (method, path, headers, body)."""

    def __init__(self, handle: Handler):
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                try:
                    handle(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(h: BaseHTTPRequestHandler, status: int, body: bytes | dict, content_type: str = JSON,
           headers: dict[str, str] | None = None) -> None:
    """Send one whole answer: ``body`` as given, or a dict as UTF-8 JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def trickle(payload: bytes, tail: int, every: float, content_type: str = JSON) -> Handler:
    """A handler answering 200 with ``payload`` whose last ``tail`` bytes come one every ``every``
    seconds (each read quick, the whole answer slow)."""
    head, rest = payload[:-tail], payload[-tail:]

    def handle(h: BaseHTTPRequestHandler, _body: bytes) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(head)
        h.wfile.flush()
        for byte in rest:
            time.sleep(every)
            h.wfile.write(bytes([byte]))
            h.wfile.flush()

    return handle
