"""A man in the middle for the flow tests: an HTTP server on 127.0.0.1 in front of a stand-in that
passes each POST on and answers what a subclass makes of it (an answer changed, rows left out, a
503 instead of passing the call on)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable

import requests


class ForwardingProxy:
    """Passes each POST on to ``target`` (with the request headers named in ``forwarded``, within
    ``timeout`` seconds) and answers ``answer(body, forward)``: ``forward()`` makes the call to the
    stand-in and returns its response. ``url`` and ``port`` are where the bus should call."""

    forwarded: tuple[str, ...] = ("content-type",)

    def __init__(self, target: str, timeout: float):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() in proxy.forwarded}

                def forward() -> requests.Response:
                    return requests.post(target + self.path, data=body, headers=headers, timeout=timeout)

                status, content, content_type = proxy.answer(body, forward)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: bytes, forward: Callable[[], requests.Response]) -> tuple[int, bytes, str]:
        """``(status, content, content type)`` to answer with; by default the stand-in's answer."""
        upstream = forward()
        return upstream.status_code, upstream.content, upstream.headers.get("Content-Type", "application/json")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
