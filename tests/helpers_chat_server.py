"""A local OpenAI-compatible chat-completions server (stdlib http.server in a thread) with injectable faults.

    with ChatServer(faults={...}, delay_s=0.0) as srv:
        srv.url  # "http://127.0.0.1:<port>/v1"

Faults are chosen per request by `fault_for(request_number, image_digest)`, or by the `faults` dict mapping an
image digest (first 12 hex of sha1 of the data URL) to a list of faults consumed one per request for that image:
"429", "500", "500text" (a plain-text 500, as a server says "no such model"), "slow" (sleeps past the client
timeout), "malformed", "empty", "nochoices", "truncated" (the body is cut short and the connection closed). Once the
list is used up the image is answered normally: "a description of image <digest>".

`serial=True` answers one request at a time (a server that generates one request at a time queues the others);
`redirect_to=URL` answers every request with a 307 to that server; `kill()` makes the server die mid-run (new
connections refused, requests in flight dropped without an answer).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def digest_of(body: dict[str, Any]) -> str:
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    return hashlib.sha1(part["image_url"]["url"].encode()).hexdigest()[:12]
        elif isinstance(content, str):
            return hashlib.sha1(content.encode()).hexdigest()[:12]
    return "none"


class FifoLock:
    """A lock taken in arrival order (a server's request queue)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.next_ticket = self.serving = 0

    def __enter__(self):
        with self.cond:
            ticket, self.next_ticket = self.next_ticket, self.next_ticket + 1
            self.cond.wait_for(lambda: self.serving == ticket)

    def __exit__(self, *exc):
        with self.cond:
            self.serving += 1
            self.cond.notify_all()


class ChatServer:
    def __init__(
        self,
        faults: dict[str, list[str]] | None = None,
        delay_s: float = 0.0,
        slow_s: float = 2.0,
        fault_fn=None,
        require_key: str | None = None,
        serial: bool = False,
        redirect_to: str | None = None,
    ):
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.fault_fn = fault_fn
        self.require_key = require_key
        self.redirect_to = redirect_to
        self.serial = FifoLock() if serial else contextlib.nullcontext()
        self.dead = False
        self.answered = 0  # requests answered with a description
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # {"digest", "fault", "auth"}
        self.seen_auth: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = (
                True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
            )

            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, payload: bytes, ctype: str = "application/json", extra=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                auth = self.headers.get("Authorization", "")
                if server.dead:
                    self.close_connection = True
                    return None
                if server.redirect_to:
                    server.requests.append({"digest": None, "fault": "redirect", "auth": auth})
                    return self._send(307, b"", extra={"Location": server.redirect_to + "/chat/completions"})
                with server.serial:
                    return self._answer(body, auth)

            def _answer(self, body, auth):
                d = digest_of(body)
                with server.lock:
                    fault = None
                    if server.fault_fn is not None:
                        fault = server.fault_fn(len(server.requests), d)
                    elif server.faults.get(d):
                        fault = server.faults[d].pop(0)
                    server.requests.append(
                        {"digest": d, "fault": fault, "auth": auth, "port": self.client_address[1]}
                    )
                if server.require_key and auth != f"Bearer {server.require_key}":
                    return self._send(401, b'{"error": "bad key"}')
                if server.delay_s:
                    time.sleep(server.delay_s)
                if server.dead:  # died while working on it: no answer at all
                    self.close_connection = True
                    return None
                if fault == "429":
                    return self._send(429, b'{"error": "rate limited"}', extra={"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, b'{"error": "boom"}')
                if fault == "slow":
                    time.sleep(server.slow_s)
                if fault == "500text":
                    return self._send(500, b"Internal Server Error", ctype="text/plain")
                if fault == "malformed":
                    return self._send(200, b'{"choices": [{"mess')
                if fault == "nochoices":
                    return self._send(200, b'{"id": "x", "choices": []}')
                if fault == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", "500")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')
                    self.close_connection = True
                    return None
                text = "" if fault == "empty" else f"a description of image {d}"
                ans = {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 6},
                }
                with server.lock:
                    server.answered += bool(text)
                return self._send(200, json.dumps(ans).encode())

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default (5) drops connections under concurrency

            def handle_error(self, request, client_address):  # a client that hung up (killed runs): quiet
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.dead:
            self.httpd.shutdown()
            self.httpd.server_close()

    def kill(self) -> None:
        """Die mid-run: refuse new connections, drop the requests in flight."""
        self.dead = True
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, fault: str | None = "any") -> int:
        with self.lock:
            return len(self.requests) if fault == "any" else sum(r["fault"] == fault for r in self.requests)
