"""The training loop: one process or many (torchrun, DDP), AMP on CUDA, exact resume, JSON-lines logs.

The loop receives a built run (the composition root, `vlmkd.compose`, builds it): a task module whose forward returns
`{"loss", "loss/<term>", ...}`, the one trainable module inside it (`state`: student, loss parameters, learned
prompts), the training data, optimizer and schedule, and an evaluator. It builds nothing itself, so it imports
nothing from tasks, eval, text, describe or teachers.

What it guarantees: DDP wraps the task whole, so every parameter of `state` is averaged across ranks; the
checkpoint, the EMA, best-epoch selection and what `fit` hands back all hold `state` whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vlmkd.config import TrainConfig
from vlmkd.engine.checkpoint import rng_state, set_rng_state
from vlmkd.engine.ema import build_ema
from vlmkd.engine.selection import BestCheckpoint
from vlmkd.engine.syncbn import convert_cpu_sync_batchnorm
from vlmkd.errors import ConfigError
from vlmkd.utils.checkpoint_io import load_checkpoint, save_checkpoint
from vlmkd.utils.dist import DistInfo, all_gather_objects, barrier, broadcast_module
from vlmkd.utils.logging import MetricsLogger, log
from vlmkd.utils.progress import progress

# (state to evaluate, split) -> metrics, on every rank (the evaluator shards the images and combines the counts);
# None when the split cannot be scored by this run
Evaluator = Callable[[nn.Module, str], "dict[str, Any] | None"]


@dataclass
class TrainData:
    """The training set as the loop reads it: a dataset with `set_epoch`, an epoch-seeded DDP-aware sampler
    (this rank's share), and how to batch it."""

    dataset: Any
    sampler: Any
    batch_size: int  # per process
    num_workers: int = 0
    collate_fn: Callable | None = None
    worker_init_fn: Callable | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.batch_size  # drop_last: every rank takes the same number of steps


@dataclass
class FitResult:
    """What the loop hands back: the state to ship (best epoch restored, EMA when enabled) and the record."""

    model: nn.Module
    selected: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0
    steps: int = 0
    skipped_images: int = 0
    skipped_files: list[str] = field(default_factory=list)


class Trainer:
    """Runs a built task: `fit()` trains, evaluates on `eval_splits` every `eval_every` epochs, selects the best
    epoch on `select_on`, and returns the selected state."""

    def __init__(
        self,
        task: nn.Module,
        state: nn.Module,
        data: TrainData,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        train_cfg: TrainConfig,
        run_dir: str | Path,
        info: DistInfo,
        device: torch.device,
        evaluator: Evaluator | None = None,
        eval_splits: list[str] | None = None,
        eval_every: int = 0,
        select_on: str = "val",
        grad_clip: float = 0.0,
        total_steps: int | None = None,
        resume: bool = False,
    ):
        self.task, self.state, self.data = task, state, data
        self.optimizer, self.scheduler = optimizer, scheduler
        self.cfg, self.run_dir, self.info, self.device = train_cfg, Path(run_dir), info, device
        self.evaluator, self.eval_splits = evaluator, list(eval_splits or [])
        self.eval_every, self.grad_clip, self.resume = eval_every, grad_clip, resume
        self.steps_per_epoch = data.steps_per_epoch
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training set ({len(data.dataset)} images) is smaller than one batch; lower data.batch_size"
            )
        self.total_steps = total_steps or self.steps_per_epoch * train_cfg.epochs
        self.model = self._wrap(task)
        self.ema = build_ema(state, train_cfg.ema_decay) if train_cfg.ema_decay > 0 else None
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best = BestCheckpoint(self.run_dir / "checkpoints" / "best.pt", select_on, write=info.is_main)
        self.logger = MetricsLogger(self.run_dir, train_cfg.tensorboard, train_cfg.wandb_project)
        self.skipped = 0
        self.skipped_files: set[str] = set()  # unreadable files this rank replaced, named in summary.json
        # The loader draws its workers' base seed from this generator, re-seeded per epoch, instead of from the
        # global CPU RNG: otherwise a mid-epoch resume (a fresh loader iterator) would shift the RNG stream
        # that dropout draws from, and the resumed run would diverge.
        self.loader_gen = torch.Generator()

    # ------------------------------------------------------------------------------------------------ setup
    def _wrap(self, task: nn.Module) -> nn.Module:
        student = self.state.student
        if self.device.type == "cuda" and self.cfg.channels_last:
            student.to(memory_format=torch.channels_last)
        if not self.info.enabled:
            return task
        from torch.nn.parallel import DistributedDataParallel as DDP

        # BN statistics over the global batch, so N processes train what one process would
        if self.device.type == "cuda":
            self.state.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
        else:
            self.state.student = convert_cpu_sync_batchnorm(student)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # the whole task: student, loss parameters and CoOp context are all averaged across ranks
        return DDP(task, device_ids=ids)

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        rngs = all_gather_objects(rng_state())  # dropout draws differ per rank: each rank resumes its own
        return {
            "state": self.state.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "rng": rngs[0],
            "rng_per_rank": rngs,
            "history": self.history,
            "best": self.best.state_dict(),
        }

    def save(self) -> None:
        state = self.state_dict()  # a collective: every rank takes part
        if self.info.is_main:
            save_checkpoint(self.run_dir / "checkpoints" / "last.pt", state)
        barrier()

    def load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        if "state" not in state:
            raise ConfigError(
                f"{path} was written by an older vlmkd (no trainable state); retrain without --resume"
            )
        self.state.load_state_dict(state["state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step, self.history = state["global_step"], list(state["history"])
        per_rank = state.get("rng_per_rank") or []
        same_world = len(per_rank) == self.info.world_size
        set_rng_state(per_rank[self.info.rank] if same_world else state["rng"])
        self.best.load_state_dict(state.get("best"))
        log.info(
            "resumed from %s at epoch %d, batch %d (step %d)",
            path,
            self.epoch,
            self.batch_in_epoch,
            self.global_step,
        )

    # ------------------------------------------------------------------------------------------------- loop
    def _step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        dtype = next(self.state.parameters()).dtype  # float64 runs (train.precision) get float64 inputs
        batch = {
            k: (
                v.to(self.device, dtype if v.is_floating_point() else None, non_blocking=True)
                if torch.is_tensor(v)
                else v
            )
            for k, v in batch.items()
        }
        if self.device.type == "cuda" and self.cfg.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        use_amp = self.cfg.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if self.grad_clip > 0:
            params = [p for p in self.state.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.state)
        return out

    def fit(self) -> FitResult:
        ckpt = self.run_dir / "checkpoints" / "last.pt"
        if self.resume:
            if not ckpt.is_file():
                raise ConfigError(f"--resume: no checkpoint at {ckpt}; start without --resume")
            self.load(ckpt)
        elif self.info.is_main:
            self.best.reset()
        self.logger.rewind(self.global_step)  # a restart or resume rewrites what came after; no duplicates
        done = self.global_step >= self.total_steps
        t0 = time.time()
        epochs, seed = self.cfg.epochs, self.cfg.seed
        while self.epoch < epochs and not done:
            self.data.sampler.set_epoch(self.epoch)
            self.data.dataset.set_epoch(self.epoch)
            self.loader_gen.manual_seed(seed * 1_000_003 + self.epoch)
            self.task.train()
            bar = progress(
                total=self.steps_per_epoch,
                initial=self.batch_in_epoch,
                desc=f"epoch {self.epoch + 1}/{epochs}",
                unit="step",
            )
            for batch in self._loader_from(self.batch_in_epoch):
                self.skipped += int(batch.pop("skipped", 0))
                self.skipped_files.update(batch.pop("skipped_files", ()))
                if "image" not in batch:
                    continue
                out = self._step(batch)
                self.batch_in_epoch += 1
                self.global_step += 1
                bar.update(1)
                if self.global_step % self.cfg.log_every == 0 or self.global_step == 1:
                    rec = {k: float(v.detach()) for k, v in out.items() if k.startswith("loss")}
                    rec.update(epoch=self.epoch, lr=self.optimizer.param_groups[0]["lr"])
                    self.logger.log(rec, step=self.global_step)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}")
                if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0:
                    self.save()
                if self.global_step >= self.total_steps:
                    done = True
                    break
            bar.close()
            if self.batch_in_epoch >= self.steps_per_epoch or done:
                finished_epoch = self.epoch
                if self.batch_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                if self.eval_every and (finished_epoch + 1) % self.eval_every == 0:
                    self._evaluate_epoch(finished_epoch)
                self.save()
        train_s = time.time() - t0
        if self.skipped:
            log.warning(
                "replaced %d reads of unreadable images (data.on_bad_image=skip): %s",
                self.skipped,
                ", ".join(sorted(self.skipped_files)),
            )
        model = self.eval_model()
        selected = self.best.restore(model) if self.info.is_main else {}
        broadcast_module(model)  # the final evaluation is sharded: every rank must hold the selected state
        selected = all_gather_objects(selected)[0]
        self.logger.close()
        return FitResult(
            model,
            selected,
            self.history,
            round(train_s, 2),
            self.global_step,
            self.skipped,
            sorted(self.skipped_files),
        )

    def _loader_from(self, batch_in_epoch: int) -> DataLoader:
        """The epoch's loader, starting after `batch_in_epoch` batches (mid-epoch resume, nothing re-read)."""
        sampler = self.data.sampler
        if batch_in_epoch:
            sampler = list(iter(sampler))[batch_in_epoch * self.data.batch_size :]
        return DataLoader(
            self.data.dataset,
            batch_size=self.data.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.data.num_workers,
            collate_fn=self.data.collate_fn,
            worker_init_fn=self.data.worker_init_fn,
            generator=self.loader_gen,
            pin_memory=self.device.type == "cuda",
        )

    # ------------------------------------------------------------------------------------------- evaluation
    def eval_model(self) -> nn.Module:
        """The state that is evaluated, selected and shipped: the EMA copy when enabled, else the live one."""
        return self.ema.module if self.ema is not None else self.state

    def _evaluate_epoch(self, epoch: int) -> None:
        if self.evaluator is None:
            return
        for split in dict.fromkeys(self.eval_splits):
            m = self.evaluator(self.eval_model(), split)  # every rank: the images are sharded
            if m is None:
                continue
            rec = {"epoch": epoch, "split": split, **{k: v for k, v in m.items() if isinstance(v, float)}}
            self.best.update(epoch, split, m, self.eval_model())
            self.history.append(rec)
            self.logger.log(
                {f"{split}/{k}": v for k, v in rec.items() if isinstance(v, float)}, step=self.global_step
            )
        barrier()
