"""Fail fast, in one line, when a pretrained model or an LLM server cannot be reached, and name the offline route.

Without these checks an unreachable hub costs ~50 s of open_clip download retries and a refused LLM connection
6 attempts, and neither error says that vlmkd can do without them: a domain teacher trained on the user's own
images (`vlmkd teacher train`, then `clip.name=domain:DIR`) and class sentences written by hand
(`classtext.sentences_file`), as docs/walkthrough.md ("Open vocabulary offline") shows.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from vlmkd.errors import BackendError

OFFLINE_ROUTE = (
    "offline route: train a domain teacher on your images (`vlmkd teacher train`, then clip.name=domain:DIR) "
    "and give class sentences in classtext.sentences_file; see docs/walkthrough.md, 'Open vocabulary offline'"
)
HUB_HOST = "huggingface.co"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set: downloads are off, only cached weights load."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def unreachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to host:port fails (e.g. 'connection refused'), or None when it opens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return "host name does not resolve"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer in {timeout:g} s"
    except OSError as e:
        return e.strerror or type(e).__name__


def check_hub(what: str) -> None:
    """Before a download from the Hugging Face hub: one quick connection test instead of minutes of retries.
    With HF_HUB_OFFLINE set nothing is checked (cached weights load; a miss fails fast by itself)."""
    if hub_offline():
        return
    reason = unreachable(HUB_HOST, 443)
    if reason:
        raise BackendError(
            f"{what} must come from {HUB_HOST}, which cannot be reached ({reason}); if it is cached, set "
            f"HF_HUB_OFFLINE=1; otherwise use the {OFFLINE_ROUTE}"
        )


def check_server(base_url: str | list[str] | None, what: str) -> None:
    """Before talking to an HTTP server (an LLM behind an OpenAI-compatible API): is anything listening?
    With a list of servers, only when none is (the others take over a dead one's requests)."""
    if isinstance(base_url, (list, tuple)):
        errors = []
        for url in base_url:
            try:
                return check_server(url, what)
            except BackendError as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return
    if not base_url:
        return
    u = urlparse(base_url)
    if not u.hostname:
        return  # a malformed URL is reported by the client itself
    port = u.port or (443 if u.scheme == "https" else 80)
    reason = unreachable(u.hostname, port, timeout=5.0)
    if reason:
        raise BackendError(
            f"{what} at {base_url} cannot be reached ({reason}); start it, or use the {OFFLINE_ROUTE}"
        )
