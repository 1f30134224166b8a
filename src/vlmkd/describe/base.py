"""What every describer returns, the describer registry, and prompt filling.

A describer turns a batch of PIL images into `n` descriptions each. It never raises for one bad answer: a
failed description is a `Description` with `text=None` and an `error`, stored as a failure and retried on the
next run. `identity()` lists everything that changes the output (model id, revision, prompt, decoding) and goes
into the description store's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from vlmkd.errors import ConfigError
from vlmkd.registry import Registry

DESCRIBERS = Registry("describer")

DEFAULT_PROMPT = "Describe the visual appearance of this image in one sentence."


@dataclass
class Description:
    text: str | None = None
    error: str | None = None
    prompt_tokens: int = -1  # -1: unknown
    completion_tokens: int = -1

    @property
    def ok(self) -> bool:
        return self.text is not None and self.error is None


def failed(error: str) -> Description:
    return Description(text=None, error=error[:500])


class Describer(Protocol):
    backend: str
    chunk_size: int  # images the runner hands to one describe() call

    def identity(self) -> dict[str, Any]:
        """Model id, revision, prompt template and decoding: part of the description store's key."""

    def describe(
        self, images: list[Image.Image], class_names: list[str | None], n: int, on_done=None
    ) -> list[list[Description]]:
        """n descriptions per image; `on_done(k)` is called as images finish (progress bars)."""


def fill_prompt(template: str, class_name: str | None) -> str:
    """Fill the optional `{class_name}` slot (underscores become spaces); other braces are left alone."""
    if "{class_name}" not in template:
        return template
    if class_name is None:
        raise ConfigError(
            "the prompt has a {class_name} slot but the sample has no class name; remove the slot"
        )
    return template.replace("{class_name}", class_name.replace("_", " "))


def decoding_of(cfg: Any) -> dict[str, Any]:
    """The decoding settings that change a generated text (they go into the store key)."""
    d: dict[str, Any] = {"max_new_tokens": int(cfg.max_new_tokens), "do_sample": bool(cfg.do_sample)}
    if cfg.do_sample:
        d.update(temperature=float(cfg.temperature), top_p=float(cfg.top_p), seed=int(cfg.seed))
    return d


def check_n(cfg: Any) -> None:
    if cfg.n_descriptions < 1:
        raise ConfigError("describe.n_descriptions must be at least 1")
    if cfg.n_descriptions > 1 and not cfg.do_sample and cfg.backend != "interrogate":
        raise ConfigError(
            "describe.n_descriptions > 1 with greedy decoding repeats the same text; set describe.do_sample=true"
        )


def list_describers() -> list[str]:
    return DESCRIBERS.names()


def build_describer(cfg: Any, teacher: Any = None) -> Any:
    """The describer named by `cfg.backend` (a DescribeConfig). `teacher`: the contrastive model for interrogate."""
    check_n(cfg)
    cls = DESCRIBERS.get(cfg.backend)
    if cfg.backend == "interrogate":
        return cls(cfg, teacher=teacher)
    return cls(cfg)
