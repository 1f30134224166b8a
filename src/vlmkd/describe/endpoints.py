"""Many OpenAI-compatible servers behind one client: least-loaded choice, per-server concurrency, backoff.

Each request attempt takes a slot at the server with the lowest load (requests in flight / its limit) among those
not backed off, and gives it back with its outcome:

- "ok": the limit grows by one after `limit` successes in a row, back up to the configured concurrency;
- "timeout" (no answer within the read timeout): the limit halves (too many in flight for this server).
  Time queued at a busy server is not held against a request: `acquire` returns the server's current limit L,
  and `ChatClient` gives the request L read timeouts (a server that generates one request at a time answers the
  last of L queued requests after L generations; requests may arrive in another order than they were sent);
- "down" (connection refused, connect timeout): the server is backed off exponentially (1 s, 2 s, ..., 30 s; the
  requests that fail together count once) and its requests go to the others; after a backoff one request probes
  it, and a server that answers again is used again. When every server has been down `MAX_DOWN` times in a row,
  `acquire` raises `AllServersDown` (the run stops with that line; finished rows are kept).

Nothing is lost: an attempt that fails at one server is retried, usually at another.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from vlmkd.errors import BackendError, ConfigError
from vlmkd.utils.logging import log


class AllServersDown(BackendError):
    """Every server refused connections through several backoffs: stop (finished rows are kept)."""


@dataclass
class Endpoint:
    url: str
    max_limit: int
    limit: int = 1
    inflight: int = 0
    backoff_until: float = 0.0
    down_streak: int = 0
    ok_streak: int = 0
    requests: int = 0
    down_events: int = 0  # times it went from answering to refusing connections (warned each time)

    @property
    def load(self) -> float:
        return self.inflight / self.limit


def chat_url(base_url: str) -> str:
    url = str(base_url).rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def as_url_list(base_url: str | list[str] | None) -> list[str]:
    urls = [base_url] if isinstance(base_url, str) else list(base_url or [])
    urls = [str(u).strip() for u in urls if str(u).strip()]
    if not urls:
        raise ConfigError("the openai backend needs a base_url, e.g. http://127.0.0.1:8000/v1 (or a list)")
    if len(set(urls)) != len(urls):
        raise ConfigError("describe.base_url lists a server twice; list each server once")
    return urls


class EndpointPool:
    BACKOFF_S = 1.0  # first backoff of a server that is down; doubles per failed probe, up to max_backoff_s
    MAX_DOWN = 4  # every server down this many times in a row (1 + 2 + 4 s of backoff): stop the run

    def __init__(self, base_urls: str | list[str] | None, concurrency: int, max_backoff_s: float = 30.0):
        c = max(1, int(concurrency))
        self.endpoints = [Endpoint(chat_url(u), max_limit=c, limit=c) for u in as_url_list(base_urls)]
        self.backoff_s, self.max_backoff_s = self.BACKOFF_S, max_backoff_s
        self.cond = threading.Condition()

    @property
    def capacity(self) -> int:
        """Requests in flight when every server is healthy: the size of the describer's thread pool."""
        return sum(e.max_limit for e in self.endpoints)

    def acquire(self) -> tuple[Endpoint, int]:
        """A slot at the least-loaded usable server, and the number of requests it may have queued (its limit)."""
        with self.cond:
            while True:
                now = time.monotonic()
                usable = [e for e in self.endpoints if e.backoff_until <= now and e.inflight < e.limit]
                if usable:
                    e = min(usable, key=lambda e: e.load)
                    e.inflight += 1
                    e.requests += 1
                    return e, e.limit
                if all(e.down_streak >= self.MAX_DOWN for e in self.endpoints):
                    urls = ", ".join(e.url for e in self.endpoints)
                    raise AllServersDown(f"no server accepts connections ({urls}); start them and rerun")
                wake = [e.backoff_until - now for e in self.endpoints if e.backoff_until > now]
                self.cond.wait(timeout=min(wake) if wake else None)

    def release(self, e: Endpoint, outcome: str) -> None:
        """Give the slot back with the outcome of the attempt: "ok", "timeout", "down" or "error"."""
        with self.cond:
            e.inflight -= 1
            if outcome == "ok":
                if e.down_streak:
                    log.info("describe: server %s answers again; sending it requests", e.url)
                e.down_streak = 0
                e.ok_streak += 1
                if e.ok_streak >= e.limit and e.limit < e.max_limit:
                    e.limit, e.ok_streak = e.limit + 1, 0
            elif outcome == "timeout":
                e.limit, e.ok_streak = max(1, e.limit // 2), 0
            elif (
                outcome == "down" and e.backoff_until <= time.monotonic()
            ):  # requests failing together: one event
                e.down_streak += 1
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (e.down_streak - 1))
                e.backoff_until = time.monotonic() + delay
                if e.down_streak == 1:  # it was answering: say so once, not on every failed probe
                    e.down_events += 1
                    others = sum(o.down_streak == 0 for o in self.endpoints)
                    log.warning(
                        "describe: server %s stopped accepting connections; %s; probing it again in %.0f s",
                        e.url,
                        f"its requests go to the {others} other server(s)"
                        if others
                        else "no other server answers",
                        delay,
                    )
            self.cond.notify_all()

    def summary(self) -> list[dict]:
        with self.cond:
            return [
                {"url": e.url, "requests": e.requests, "limit": e.limit, "down_events": e.down_events}
                for e in self.endpoints
            ]
