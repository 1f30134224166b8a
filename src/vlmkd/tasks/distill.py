"""One task for every method: student + named loss terms whose inputs are served on demand.

Each registered loss declares `inputs` (e.g. ("logits", "labels") or ("embedding", "teacher_features",
"class_text", "labels")). The task computes the student once, asks the providers (vlmkd.tasks.providers) only for
what the enabled terms need, and sums `weight * term`.

Under DDP, a term whose value depends on the other samples of the batch (in-batch negatives, a mean over a
data-dependent subset) declares `batch_coupled` inputs; the task all-gathers those over ranks with gradients
(vlmkd.utils.dist.gather_rows) so every rank computes the loss of the global batch. Why this is exact: rank r's
features receive the sum over ranks of the gradient of the (identical) loss, i.e. W times the one-process gradient,
and DDP divides by W. With `local_loss`, each rank scores only its own rows against all columns; the W rank losses
sum to W times the full loss, so the same argument holds. Per-sample terms stay local (a mean over equal local
batches, averaged by DDP, is the global mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlmkd.errors import ConfigError
from vlmkd.utils.dist import gather_rows, get_info, row_counts

STUDENT_OUTPUTS = {"logits": "logits", "embedding": "embedding", "proj": "embedding", "features": "features"}


@dataclass
class LossSpec:
    name: str  # the term's name in logs, e.g. "cls", "kd", "text"
    weight: float
    module: nn.Module


class TrainableState(nn.Module):
    """Everything a run learns, as one module: the student, the loss terms' parameters (e.g. a learnable
    temperature) and CoOp's learned context. DDP, the checkpoint, the EMA, best-epoch selection and export all read
    this module whole, so a resumed, selected or exported run has exactly the state it was evaluated with."""

    def __init__(
        self, student: nn.Module, losses: dict[str, nn.Module], prompt_learner: nn.Module | None = None
    ):
        super().__init__()
        self.student = student
        self.losses = nn.ModuleDict(losses)
        self.prompt_learner = prompt_learner

    def class_text(self) -> torch.Tensor | None:
        """The learned class-text matrix (C_train x D, with gradients), or None without CoOp."""
        return None if self.prompt_learner is None else self.prompt_learner()


class DistillTask(nn.Module):
    """The unit of training: `state` (the one trainable module: student, the terms' parameters, `prompt_learner`)
    + frozen providers + the weighted terms.

    DDP wraps the task: its parameters are exactly `state`'s, because the providers (teachers, cached stores) are
    kept outside the module tree."""

    def __init__(
        self,
        student: nn.Module,
        terms: list[LossSpec],
        providers: dict[str, nn.Module] | None = None,
        gather: bool = True,
        local_loss: bool = False,
        prompt_learner: nn.Module | None = None,
    ):
        super().__init__()
        if not terms:
            raise ConfigError("no loss term is enabled; give at least one term in `losses` with weight > 0")
        self.state = TrainableState(student, {t.name: t.module for t in terms}, prompt_learner)
        self.terms = terms
        # frozen input providers: outside the module tree (never trained or checkpointed); _apply moves them
        self.__dict__["providers"] = dict(providers or {})
        self.needed = {name for t in terms for name in t.module.inputs}
        self.gather, self.local_loss = bool(gather), bool(local_loss)

    @property
    def student(self) -> nn.Module:
        return self.state.student

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.state.parameters() if p.requires_grad]

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for p in self.providers.values():
            p._apply(fn, *args, **kwargs)
        return self

    @property
    def row_sources(self) -> dict[str, Any]:
        """Per-sample row sources for the training dataset (cached stores, read one sample at a time)."""
        return {name: p.rows for name, p in self.providers.items() if p.rows is not None}

    @property
    def class_text(self) -> torch.Tensor | None:
        p = self.providers.get("class_text")
        return None if p is None else p.value

    def _input(self, name: str, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> torch.Tensor:
        if name in STUDENT_OUTPUTS:
            key = STUDENT_OUTPUTS[name]
            if key not in out:
                raise ConfigError(
                    f"a loss needs the student's {key!r} output; set model.head to "
                    f"{'embedding or both' if key == 'embedding' else 'classifier or both'}"
                )
            return out[key]
        if name == "labels":
            return batch["label"]
        if name == "class_text" and self.state.prompt_learner is not None:
            return self.state.class_text()  # CoOp (vlmkd.text.coop): learned class texts, with gradients
        if name in self.providers:
            return self.providers[name](batch, out)
        raise ConfigError(
            f"a loss needs {name!r} but no source provides it; configure the teacher or text artifacts"
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.state.student(batch["image"])
        local: dict[str, torch.Tensor] = {}
        gathered: dict[str, torch.Tensor] = {}
        sizes: list[int] | None = None
        result: dict[str, torch.Tensor] = {}
        total = None
        for t in self.terms:
            coupled = set(getattr(t.module, "batch_coupled", ())) if self.gather else set()
            if coupled and sizes is None:
                sizes = row_counts(len(batch["image"]), batch["image"].device)
            args = []
            for name in t.module.inputs:
                if name not in local:
                    local[name] = self._input(name, batch, out)
                if name in coupled and name not in gathered:
                    gathered[name] = gather_rows(local[name], sizes)
                args.append(gathered[name] if name in coupled else local[name])
            kwargs = {}
            if coupled and self.local_loss and getattr(t.module, "local_rows", False) and len(sizes) > 1:
                rank = get_info().rank  # this rank's rows of the gathered batch
                kwargs["rows"] = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
            # losses in float32 at least (bf16 autocast outputs upcast), float64 in a float64 run
            args = [
                a.to(torch.promote_types(a.dtype, torch.float32)) if a.is_floating_point() else a
                for a in args
            ]
            value = t.module(*args, **kwargs)
            result[f"loss/{t.name}"] = value.detach()
            total = t.weight * value if total is None else total + t.weight * value
        result["loss"] = total
        if "logits" in out:
            result["logits"] = out["logits"].detach()
        return result
