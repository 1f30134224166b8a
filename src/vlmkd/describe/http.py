"""The `openai` describer: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, Ollama, TGI, hosted).

Stdlib only (urllib + threads). Images travel as base64 data URLs. Requests run `concurrency` at a time; 429,
5xx, connection errors and timeouts are retried with exponential backoff and jitter (honouring Retry-After);
malformed or empty answers are recorded as failures, never as text. The API key is read from the environment
variable named by `api_key_env` at request time and is never logged, stored or put in an error message.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from vlmkd.describe.base import DEFAULT_PROMPT, DESCRIBERS, Description, decoding_of, failed, fill_prompt
from vlmkd.errors import ConfigError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ChatClient:
    """A minimal chat-completions client: `complete(messages, **params) -> Description`."""

    def __init__(
        self,
        base_url: str | None,
        model: str | None,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ):
        if not base_url:
            raise ConfigError("the openai backend needs a base_url, e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise ConfigError("the openai backend needs a model name (the name the server serves)")
        if api_key_env and not os.environ.get(api_key_env):
            raise ConfigError(
                f"environment variable {api_key_env} (api_key_env) is not set; export the API key"
            )
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text

    def _request(self, body: bytes) -> tuple[int, bytes, str | None]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = "Bearer " + os.environ.get(self.api_key_env, "")
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.read(), None
        except urllib.error.HTTPError as e:
            retry_after = e.headers.get("Retry-After") if e.headers else None
            try:
                payload = e.read()
            except Exception:  # noqa: BLE001 - the body of an error response is best effort
                payload = b""
            return e.code, payload, retry_after

    def complete(self, messages: list[dict], **params: Any) -> Description:
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        error = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                status, payload, retry_after = self._request(body)
            except TimeoutError:
                status, payload, error = -1, b"", f"timeout after {self.timeout_s:g} s"
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    status, payload, error = -1, b"", f"timeout after {self.timeout_s:g} s"
                else:
                    status, payload, error = -1, b"", f"connection error: {reason}"
            if status == 200:
                return parse_answer(payload)
            if status > 0:
                error = f"HTTP {status}: {payload[:200].decode('utf-8', 'replace')}"
                if status not in RETRY_STATUS:
                    break
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        return failed(self._scrub(f"{error} (after {attempt + 1} attempts)"))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random())


def parse_answer(payload: bytes) -> Description:
    """The first choice's message text; a malformed or empty body is a failure."""
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
        self.client = ChatClient(cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout_s, cfg.max_retries)
        self.template = DEFAULT_PROMPT if cfg.prompt is None else cfg.prompt
        self.concurrency = max(1, int(cfg.concurrency))
        self.chunk_size = max(self.concurrency * 8, int(cfg.batch_size))

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.cfg.model,
            "revision": self.cfg.revision,
            "prompt": self.template,
            "image_format": self.cfg.image_format,
            "decoding": decoding_of(self.cfg),
        }

    def params(self, k: int) -> dict[str, Any]:
        p: dict[str, Any] = {"max_tokens": int(self.cfg.max_new_tokens)}
        if self.cfg.do_sample:
            p.update(temperature=float(self.cfg.temperature), top_p=float(self.cfg.top_p))
            p["seed"] = int(self.cfg.seed) + k
        else:
            p["temperature"] = 0.0
        return p

    def describe_one(self, image: Image.Image, prompt: str, k: int) -> Description:
        content = [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": image_data_url(image, self.cfg.image_format)}},
        ]
        return self.client.complete([{"role": "user", "content": content}], **self.params(k))

    def describe(self, images, class_names, n, on_done=None):
        prompts = [fill_prompt(self.template, c) for c in class_names]
        results: list[list[Description | None]] = [[None] * n for _ in images]
        remaining = [n] * len(images)
        lock = threading.Lock()

        def job(i: int, k: int) -> None:
            results[i][k] = self.describe_one(images[i], prompts[i], k)
            with lock:
                remaining[i] -= 1
                if remaining[i] == 0 and on_done:
                    on_done(1)

        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(job, i, k) for i in range(len(images)) for k in range(n)]
            for f in futures:
                f.result()
        return results
