"""Loss registry: every loss is an `nn.Module` built by name from the config.

Each loss class declares `inputs`, the names of the tensors its `forward` takes positionally, from this vocabulary:

- ``logits``: student class logits, B x C
- ``labels``: int64 class ids, B
- ``teacher_logits``: vision-teacher class logits, B x C
- ``proj``: student projected features, B x D (raw)
- ``text_emb``: per-image description embeddings, B x D or B x K x D
- ``embedding``: student embedding output, B x D (raw)
- ``teacher_features``: teacher image features, B x D (raw)
- ``class_text``: class-text embeddings, C x D (raw)
- ``caption_emb``: per-image caption embeddings, B x D

Inputs are raw; losses that need unit vectors L2-normalise them themselves. `forward` returns a scalar. Losses that
need the training-set class counts take ``class_counts`` as a constructor argument.

A loss whose value depends on the other samples of the batch (in-batch negatives, a mean over a data-dependent
subset) declares ``batch_coupled``: the inputs the task all-gathers over DDP ranks before calling it, so N
processes optimise the one-process objective. ``local_rows = True`` means `forward` also takes ``rows=`` (a slice
of the gathered batch: score only those rows against all columns; train.local_loss). See `vlmkd.losses.batch`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlmkd.registry import Registry

LOSSES = Registry("loss")

# Importing the modules registers their losses (they import LOSSES from here, so it must exist first).
from vlmkd.losses import alignment, classification, kd, text  # noqa: E402, F401


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as `name`; unknown names or options raise ConfigError with a suggestion."""
    return LOSSES.build(name, **kwargs)


def list_losses() -> list[str]:
    return LOSSES.names()


__all__ = ["LOSSES", "build", "list_losses"]
