"""Model selection: keep the trainable state (student, learned prompts, loss parameters) of the epoch that scored best on `eval.select_on`, never on the test split.

Selecting on the split that is then reported gives an optimistic number, so `test` (and the novel-class `ood*`
splits of the OOD protocol) are refused. The best weights go to `checkpoints/best.pt` when they improve, so a
resumed run still ends with the best model; a run without the selection split keeps its last model and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmkd.errors import ConfigError
from vlmkd.utils.checkpoint_io import load_checkpoint, save_checkpoint

METRIC = "mean_per_class"  # equals accuracy on a balanced split; robust to an imbalanced one


def check_select_on(split: str) -> None:
    if split == "test" or split.startswith("ood"):
        raise ConfigError(
            f"eval.select_on={split}: choosing the model on the split it is reported on makes that number "
            "optimistic; select on val (data.val_fraction or data.longtail.val_per_class creates one) or id"
        )


class BestCheckpoint:
    def __init__(self, path: str | Path, split: str, write: bool = True):
        # every rank keeps the score (it is part of the checkpoint); only the writing rank saves the weights
        self.path, self.split, self.write = Path(path), split, write
        self.epoch: int | None = None
        self.score = float("-inf")

    def reset(self) -> None:
        """A fresh (not resumed) run must not end with the best model of an earlier run in the same folder."""
        self.path.unlink(missing_ok=True)

    def update(self, epoch: int, split: str, metrics: dict[str, Any], model: torch.nn.Module) -> None:
        score = metrics.get(METRIC)
        if split != self.split or score is None or score <= self.score:
            return  # ties keep the earlier epoch
        self.epoch, self.score = epoch, float(score)
        if (
            self.write
        ):  # the whole trainable state: the student with the prompts and loss parameters it scored with
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            save_checkpoint(self.path, {"state": state, "epoch": epoch, METRIC: self.score})

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": self.score}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.epoch, self.score = state["epoch"], float(state["score"])

    def restore(self, model: torch.nn.Module) -> dict[str, Any]:
        """Load the best weights into `model`; returns what was selected, for the summary."""
        if self.epoch is None or not self.path.is_file():
            return {"split": None, "epoch": None, "reason": f"no {self.split!r} split scored: last model"}
        model.load_state_dict(load_checkpoint(self.path)["state"])
        return {"split": self.split, "epoch": self.epoch, METRIC: self.score}
