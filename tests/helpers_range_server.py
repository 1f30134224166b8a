"""A local static file server with HTTP Range requests, as object storage answers them (stdlib, in a thread).

    with RangeServer(root, latency_s=0.02) as srv:
        srv.url  # "http://127.0.0.1:<port>"; srv.url + "/train-000000.tar" is root/train-000000.tar

Every request waits `latency_s` first (object storage's time to first byte); GET and HEAD, a single
`bytes=a-b`, `bytes=a-` or `bytes=-n` range (206, 416 past the end), `Accept-Ranges`, `Content-Length` and
`Last-Modified`, as fsspec's HTTP filesystem needs them. It counts requests (`requests`, `range_requests`) and the
most it served at once (`max_in_flight`), which says whether a client overlapped its requests.
"""

from __future__ import annotations

import email.utils
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _Server(ThreadingHTTPServer):
    # a client opens a connection per request in flight (a batch's worth at once); the default listen backlog of 5
    # would drop the rest, and each dropped connection waits a second or more for TCP to retry
    request_queue_size = 1024


class RangeServer:
    def __init__(self, root: str | Path, latency_s: float = 0.0):
        self.root, self.latency_s = Path(root).resolve(), latency_s
        self.requests = self.range_requests = self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections to object storage

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server._serve(self, body=False)

            def do_GET(self):
                server._serve(self, body=True)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.latency_s)
            self._answer(h, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = (self.root / unquote(urlparse(h.path).path).lstrip("/")).resolve()
        if not path.is_file() or not path.is_relative_to(self.root):
            h.send_error(404)
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        m = _RANGE.fullmatch((h.headers.get("Range") or "").strip())
        if m and (m.group(1) or m.group(2)):
            with self._lock:
                self.range_requests += 1
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # the last n bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status = 206
        h.send_response(status)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(end - start + 1))
        h.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime, usegmt=True))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        if body:
            with open(path, "rb") as f:
                f.seek(start)
                h.wfile.write(f.read(end - start + 1))
