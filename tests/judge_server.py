"""One local HTTP server for the judge tests: on 127.0.0.1 (port 0), started inside a test,
shut down on exit; each handler gives up on a silent client after a few seconds."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    """Answer one request with ``status``, a JSON ``body`` and extra ``headers``."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


class LocalServer:
    """``handle(handler)`` answers each request (GET or POST); ``requests`` records each one's
    method, path, headers and JSON body (``None`` when it has none)."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None]):
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a handler never waits on the client for longer

            def _any(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers),
                     "body": json.loads(raw) if raw else None}
                )  # fmt: skip
                handle(self)

            do_GET = do_POST = _any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.origin}/v1/chat/completions"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def canned_server(replies: list[tuple[int, bytes]]) -> LocalServer:
    """A chat-completions server whose ``(status, body)`` replies are given in order."""
    queue = list(replies)
    return LocalServer(lambda handler: reply(handler, *queue.pop(0)))
