"""The `openai` describer: OpenAI-compatible chat-completions servers (vLLM, SGLang, Ollama, TGI, hosted).

The client is httpx (keep-alive connections, and an `Authorization` header that is dropped when a redirect leaves
the server's origin). `base_url` may list several servers (`endpoints.EndpointPool`: least-loaded first, per-server
concurrency, backoff of a server that is down). Images are downscaled to `max_side` and travel as base64 data URLs.

Retried within the run, with exponential backoff and jitter (Retry-After honoured): 408/409/425/429/5xx, connection
errors, answers cut short, malformed answers and empty `choices`. Time queued at a busy server is not a failure:
a request to a server that takes L requests at a time gets L x `timeout_s` to answer (the server may generate
one at a time), and a timeout halves that server's L (`endpoints.py`).
Stopped at once: 401/403 (`AuthError`, naming the environment variable of the key), and a run whose first
`fail_fast_after` attempts all failed the same way (a wrong model name). The API key is read from the environment
variable `api_key_env` at request time, and is never logged, stored or put in an error message.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from vlmkd.describe.base import DEFAULT_PROMPT, DESCRIBERS, Description, decoding_of, failed, fill_prompt
from vlmkd.describe.endpoints import EndpointPool
from vlmkd.describe.keys import sample_seed
from vlmkd.errors import BackendError, ConfigError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
TRANSIENT_STATUS = {429, 503}  # "try later": never a reason to stop the run early


class AuthError(BackendError):
    """The server refused the credentials (401/403): every further request would fail the same way."""


class FailFast(BackendError):
    """The first requests all failed the same way: the configuration is wrong, not the images."""


@dataclass
class Try:
    """How one request attempt went."""

    answer: Description | None = None
    error: str = ""
    retry_after: str | None = None
    status: int = 0  # HTTP status; 0 when no answer came


class ChatClient:
    """A chat-completions client over one or more servers: `complete(messages, **params) -> Description`."""

    def __init__(
        self,
        base_url: str | list[str] | None,
        model: str | None,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        concurrency: int = 8,
        connect_timeout_s: float = 10.0,
        fail_fast_after: int = 8,
    ):
        import httpx

        if not model:
            raise ConfigError("the openai backend needs a model name (the name the server serves)")
        if api_key_env and not os.environ.get(api_key_env):
            raise ConfigError(
                f"environment variable {api_key_env} (api_key_env) is not set; export the API key"
            )
        self.pool = EndpointPool(base_url, concurrency)
        self.url = self.pool.endpoints[0].url
        self.model, self.api_key_env = model, api_key_env
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.connect_timeout_s = float(connect_timeout_s)
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        n = self.pool.capacity
        self.http = httpx.Client(
            timeout=httpx.Timeout(self.timeout_s, connect=float(connect_timeout_s)),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            follow_redirects=True,  # httpx drops Authorization when a redirect leaves the origin
            trust_env=False,  # no proxy or .netrc credentials picked up from the environment
        )
        self.fail_fast_after = int(fail_fast_after)
        self.lock = threading.Lock()
        self.first_errors: list[str] = []
        self.any_ok = False
        self.abort: BackendError | None = None
        self.latencies: list[float] = []

    def close(self) -> None:
        self.http.close()

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text

    def _post(self, url: str, body: bytes, queue: int) -> tuple[int, bytes, str | None]:
        import httpx

        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = "Bearer " + os.environ.get(self.api_key_env, "")
        timeout = httpx.Timeout(self.timeout_s * queue, connect=self.connect_timeout_s)
        r = self.http.post(url, content=body, headers=headers, timeout=timeout)
        return r.status_code, r.content, r.headers.get("Retry-After")

    def _attempt(self, body: bytes) -> Try:
        """One try at the least-loaded server."""
        import httpx

        try:
            ep, queue = self.pool.acquire()
        except BackendError as e:  # every server is down: stop every request, not just this one
            self._stop(e)
        t0 = time.monotonic()
        try:
            status, payload, retry_after = self._post(ep.url, body, queue)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            return self._failed_at(ep, "down", f"cannot connect to {ep.url} ({type(e).__name__})")
        except httpx.TimeoutException:
            return self._failed_at(
                ep, "timeout", f"no answer from {ep.url} within {self.timeout_s * queue:g} s"
            )
        except httpx.TransportError as e:  # answers cut short, resets mid-body (IncompleteRead and kin)
            return self._failed_at(ep, "error", f"connection to {ep.url} broke ({type(e).__name__})")
        except BaseException:
            self.pool.release(ep, "error")
            raise
        answer = parse_answer(payload) if status == 200 else None
        if answer is not None and answer.ok:
            self.pool.release(ep, "ok")
            self.latencies.append(time.monotonic() - t0)
            return Try(answer=answer)
        self.pool.release(ep, "error")  # neither a success (to grow the limit) nor a dead server
        if status in (401, 403):
            where = (
                f"the key in ${self.api_key_env}"
                if self.api_key_env
                else "describe.api_key_env (no key sent)"
            )
            self._stop(AuthError(f"the server refused authentication (HTTP {status}); check {where}"))
        error = (
            answer.error
            if answer is not None
            else f"HTTP {status}: {payload[:200].decode('utf-8', 'replace')}"
        )
        return Try(error=error, retry_after=retry_after, status=status)

    def _failed_at(self, ep, outcome: str, error: str) -> Try:
        self.pool.release(ep, outcome)
        return Try(error=error)

    def _note(self, t: Try) -> None:
        """Remember how the first attempts went; stop when the first `fail_fast_after` failed the same way."""
        with self.lock:
            if t.answer is not None:
                self.any_ok = True
                return
            if self.any_ok or self.fail_fast_after <= 0 or t.status in TRANSIENT_STATUS:
                return
            self.first_errors.append(f"{t.status}:{t.error[:60]}")
            k = self.fail_fast_after
            if len(self.first_errors) >= k and len(set(self.first_errors[:k])) == 1:
                msg = f"the first {k} requests all failed the same way: {self._scrub(t.error[:160])}"
                self._stop(FailFast(msg + "; check describe.model and describe.base_url"))

    def _stop(self, err: BackendError) -> None:
        if self.abort is None:
            self.abort = err
        raise self.abort

    def complete(self, messages: list[dict], **params: Any) -> Description:
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        error, attempt = "no attempt", 0
        while attempt <= self.max_retries:
            if self.abort is not None:
                raise self.abort
            t = self._attempt(body)
            self._note(t)
            if t.answer is not None:
                return t.answer
            error, attempt = t.error, attempt + 1
            if t.status and t.status != 200 and t.status not in RETRY_STATUS:
                break
            if attempt <= self.max_retries:
                time.sleep(self._delay(attempt, t.retry_after))
        return failed(self._scrub(f"{error} (after {attempt} attempts)"))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(0, attempt - 1)) * (0.5 + random.random())

    def mean_latency_s(self) -> float | None:
        return sum(self.latencies) / len(self.latencies) if self.latencies else None


def parse_answer(payload: bytes) -> Description:
    """The first choice's message text; a malformed or empty body is a failure (retried by the client)."""
    try:
        data = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return failed(f"malformed answer: {payload[:200].decode('utf-8', 'replace')!r}")
    if isinstance(content, list):  # some servers return content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        return failed("empty answer")
    usage = data.get("usage") or {}
    return Description(
        " ".join(content.split()),
        None,
        int(usage.get("prompt_tokens", -1) or -1),
        int(usage.get("completion_tokens", -1) or -1),
    )


def downscale(image: Image.Image, max_side: int | None) -> Image.Image:
    """The image with its longest side at most `max_side` (aspect kept); a VLM never needs more than its input."""
    if not max_side or max(image.size) <= max_side:
        return image
    im = image.copy()
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def image_data_url(image: Image.Image, fmt: str = "png") -> str:
    buf = io.BytesIO()
    fmt = fmt.lower()
    im = image.convert("RGB") if fmt in ("jpeg", "jpg") or image.mode not in ("RGB", "L", "RGBA") else image
    im.save(buf, format="JPEG" if fmt in ("jpeg", "jpg") else "PNG")
    mime = "jpeg" if fmt in ("jpeg", "jpg") else "png"
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@DESCRIBERS.register("openai")
class OpenAIDescriber:
    backend = "openai"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.client = ChatClient(
            cfg.base_url,
            cfg.model,
            cfg.api_key_env,
            cfg.timeout_s,
            cfg.max_retries,
            concurrency=cfg.concurrency,
            connect_timeout_s=cfg.connect_timeout_s,
            fail_fast_after=cfg.fail_fast_after,
        )
        self.template = DEFAULT_PROMPT if cfg.prompt is None else cfg.prompt
        self.concurrency = self.client.pool.capacity
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="vlmkd-describe")
        self.chunk_size = max(self.concurrency * 4, int(cfg.batch_size))

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.cfg.model,
            "revision": self.cfg.revision,
            "prompt": self.template,
            "image_format": self.cfg.image_format,
            "max_side": self.cfg.max_side,
            "decoding": decoding_of(self.cfg),
        }

    def params(self, k: int, key: bytes | None = None) -> dict[str, Any]:
        p: dict[str, Any] = {"max_tokens": int(self.cfg.max_new_tokens)}
        if self.cfg.do_sample:
            p.update(temperature=float(self.cfg.temperature), top_p=float(self.cfg.top_p))
            p["seed"] = sample_seed(self.cfg.seed, key, k) if key is not None else int(self.cfg.seed) + k
        else:
            p["temperature"] = 0.0
        return p

    def describe_one(self, url: str, prompt: str, k: int, key: bytes | None = None) -> Description:
        content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
        return self.client.complete([{"role": "user", "content": content}], **self.params(k, key))

    def describe(self, images, class_names, n, on_done=None, keys=None):
        return self.describe_async(images, class_names, n, on_done, keys)()

    def describe_async(self, images, class_names, n, on_done=None, keys=None):
        """Queue the requests on the shared thread pool now; returns `wait() -> results`."""
        prompts = [fill_prompt(self.template, c) for c in class_names]
        results: list[list[Description | None]] = [[None] * n for _ in images]
        remaining = [n] * len(images)
        urls: list[str | None] = [None] * len(images)
        locks = [threading.Lock() for _ in images]
        lock = threading.Lock()

        def job(i: int, k: int) -> None:
            with locks[i]:  # encode each image once, in the worker threads
                if urls[i] is None:
                    urls[i] = image_data_url(downscale(images[i], self.cfg.max_side), self.cfg.image_format)
            results[i][k] = self.describe_one(urls[i], prompts[i], k, keys[i] if keys is not None else None)
            with lock:
                remaining[i] -= 1
                if remaining[i] == 0 and on_done:
                    on_done(1)

        futures = [self.pool.submit(job, i, k) for i in range(len(images)) for k in range(n)]

        def wait():
            for f in futures:
                f.exception()  # wait for all, then raise the first error (an AuthError stops every job)
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                raise self.client.abort or errors[0]
            return results

        return wait
