"""The training loop: one process or many (torchrun, DDP), AMP on CUDA, exact resume, JSON-lines logs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vlmkd.config import Config, save_config
from vlmkd.data import build_manifests
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.samplers import build_sampler, worker_init
from vlmkd.data.transforms import build_transform, preprocess_config
from vlmkd.engine.checkpoint import (
    export_student,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from vlmkd.engine.optim import build_optimizer, build_scheduler
from vlmkd.engine.selection import BestCheckpoint, check_select_on
from vlmkd.errors import ConfigError
from vlmkd.utils.device import resolve_device
from vlmkd.utils.dist import all_reduce_sum, barrier, init_distributed
from vlmkd.utils.logging import MetricsLogger, log
from vlmkd.utils.progress import progress


def make_run_dir(cfg: Config, stem: str = "run") -> Path:
    name = cfg.train.name or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.train.output_dir) / name


class Trainer:
    """Builds data, task, optimizer from a Config; `fit()` trains, evaluates and writes the run folder."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False):
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        check_select_on(cfg.eval.select_on)
        self.info = init_distributed(cfg.train.device)
        self.device = resolve_device(cfg.train.device, self.info.local_rank)
        torch.manual_seed(cfg.train.seed)  # identical init on every rank
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.manifests = build_manifests(cfg.data)
        from vlmkd.tasks.build import build_task
        from vlmkd.utils import provenance

        provenance.start_run()  # artifacts.json names what this run's build_task reads

        self.task, extras, self.eval_spec = build_task(cfg, self.manifests, self.device)
        self.task.to(self.device)
        self._build_loader(extras)
        self._wrap_model()
        params = self.task.trainable_parameters()
        self.optimizer = build_optimizer(params, cfg.optim)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps, self.steps_per_epoch)
        self.ema = None
        if cfg.train.ema_decay > 0:
            from vlmkd.engine.ema import build_ema

            self.ema = build_ema(unwrap(self.task.student), cfg.train.ema_decay)
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best = BestCheckpoint(self.run_dir / "checkpoints" / "best.pt", cfg.eval.select_on)
        self.logger = MetricsLogger(self.run_dir, cfg.train.tensorboard, cfg.train.wandb_project)
        self.skipped = 0
        self.skipped_files: set[str] = set()  # unreadable files this rank replaced, named in summary.json

    # ------------------------------------------------------------------------------------------------ setup
    def _build_loader(self, extras: dict[str, Any]) -> None:
        cfg, info = self.cfg, self.info
        if cfg.data.batch_size % info.world_size:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} must be divisible by the {info.world_size} processes"
            )
        train = self.manifests["train"]
        self.dataset = ManifestDataset(
            train, build_transform(cfg.data, train=True), extras, cfg.data.on_bad_image, replace_bad=True
        )
        self.dataset.seed = cfg.train.seed
        self.sampler = build_sampler(
            cfg.data.sampler, train.labels, info.world_size, info.rank, cfg.train.seed
        )
        per_rank = cfg.data.batch_size // info.world_size
        if len(self.sampler) < per_rank:
            raise ConfigError(
                f"the training set ({len(train)} images) is smaller than one batch; lower data.batch_size"
            )
        # The loader draws its workers' base seed from this generator, re-seeded per epoch, instead of from the
        # global CPU RNG: otherwise a mid-epoch resume (a fresh loader iterator) would shift the RNG stream
        # that dropout and sampled descriptions draw from, and the resumed run would diverge.
        self.loader_gen = torch.Generator()
        self.loader = self._loader(self.sampler)

    def _wrap_model(self) -> None:
        student = self.task.student
        if self.device.type == "cuda" and self.cfg.train.channels_last:
            student.to(memory_format=torch.channels_last)
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # BN statistics over the global batch, so N processes train what one process would
            if self.device.type == "cuda":
                student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
            else:
                from vlmkd.engine.syncbn import convert_cpu_sync_batchnorm

                student = convert_cpu_sync_batchnorm(student)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.task.student = DDP(student, device_ids=ids)

    def _loss_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.task.loss_modules.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "student": unwrap(self.task.student).state_dict(),
            "losses": self.task.loss_modules.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "rng": rng_state(),
            "history": self.history,
            "best": self.best.state_dict(),
        }

    def save(self) -> None:
        if self.info.is_main:
            save_checkpoint(self.run_dir / "checkpoints" / "last.pt", self.state_dict())
        barrier()

    def load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        unwrap(self.task.student).load_state_dict(state["student"])
        self.task.loss_modules.load_state_dict(state["losses"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step, self.history = state["global_step"], list(state["history"])
        set_rng_state(state["rng"])
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
        batch = {
            k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()
        }
        if self.device.type == "cuda" and self.cfg.train.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        use_amp = self.cfg.train.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = self.task(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if self.info.enabled:  # loss parameters (e.g. learnable temperatures) live outside DDP
            for p in self._loss_params():
                if p.grad is not None:
                    all_reduce_sum(p.grad).div_(self.info.world_size)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.task.trainable_parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.task.student))
        return out

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        ckpt = self.run_dir / "checkpoints" / "last.pt"
        if self.resume:
            if not ckpt.is_file():
                raise ConfigError(f"--resume: no checkpoint at {ckpt}; start without --resume")
            self.load(ckpt)
        elif self.info.is_main:
            self.best.reset()
        self.logger.rewind(self.global_step)  # a restart or resume rewrites what came after; no duplicates
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            for split, m in self.manifests.items():
                m.save(self.run_dir / "manifests" / f"{split}.json")
        done = self.global_step >= self.total_steps
        t0 = time.time()
        while self.epoch < cfg.train.epochs and not done:
            self.sampler.set_epoch(self.epoch)
            self.dataset.set_epoch(self.epoch)
            self.loader_gen.manual_seed(cfg.train.seed * 1_000_003 + self.epoch)
            self.task.train()
            bar = progress(
                total=self.steps_per_epoch,
                initial=self.batch_in_epoch,
                desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                unit="step",
            )
            it = iter(self._loader_from(self.batch_in_epoch))
            for batch in it:
                self.skipped += int(batch.pop("skipped", 0))
                self.skipped_files.update(batch.pop("skipped_files", ()))
                if "image" not in batch:
                    continue
                out = self._step(batch)
                self.batch_in_epoch += 1
                self.global_step += 1
                bar.update(1)
                if self.global_step % cfg.train.log_every == 0 or self.global_step == 1:
                    rec = {k: float(v.detach()) for k, v in out.items() if k.startswith("loss")}
                    rec.update(epoch=self.epoch, lr=self.optimizer.param_groups[0]["lr"])
                    self.logger.log(rec, step=self.global_step)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}")
                if cfg.train.checkpoint_every and self.global_step % cfg.train.checkpoint_every == 0:
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
                if cfg.eval.every and (finished_epoch + 1) % cfg.eval.every == 0:
                    self._evaluate_epoch(finished_epoch)
                self.save()
        train_time = time.time() - t0
        if self.skipped:
            log.warning(
                "replaced %d reads of unreadable images (data.on_bad_image=skip): %s",
                self.skipped,
                ", ".join(sorted(self.skipped_files)),
            )
        summary = self._finish(train_time)
        self.logger.close()
        return summary

    def _loader_from(self, batch_in_epoch: int):
        """The epoch's loader, starting after `batch_in_epoch` batches (mid-epoch resume, nothing re-read)."""
        if batch_in_epoch == 0:
            return self.loader
        return self._loader(list(iter(self.sampler))[batch_in_epoch * self.loader.batch_size :])

    def _loader(self, sampler) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.data.batch_size // self.info.world_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.cfg.data.num_workers,
            collate_fn=collate_skip,
            worker_init_fn=worker_init,
            generator=self.loader_gen,
            pin_memory=self.device.type == "cuda",
        )

    # ------------------------------------------------------------------------------------------- evaluation
    def _eval_model(self):
        return self.ema.module if self.ema is not None else unwrap(self.task.student)

    def _evaluate_epoch(self, epoch: int) -> None:
        splits = dict.fromkeys([self.cfg.eval.select_on, *self.cfg.eval.track])
        for split in splits if self.info.is_main else ():
            if split not in self.manifests or (split.startswith("ood") and self.eval_spec.mode == "logits"):
                continue
            from vlmkd.eval.evaluate import evaluate_split

            m = evaluate_split(
                self._eval_model(), self.manifests, split, self.cfg, self.eval_spec, self.device
            )
            rec = {"epoch": epoch, "split": split, **{k: v for k, v in m.items() if isinstance(v, float)}}
            self.best.update(epoch, split, m, self._eval_model())
            self.history.append(rec)
            self.logger.log(
                {f"{split}/{k}": v for k, v in rec.items() if isinstance(v, float)}, step=self.global_step
            )
        barrier()

    def _finish(self, train_time: float) -> dict[str, Any]:
        from vlmkd.eval.evaluate import evaluate_run
        from vlmkd.students import student_spec

        summary: dict[str, Any] = {}
        if self.info.is_main:
            model = self._eval_model()
            selected = self.best.restore(model)
            train = self.manifests["train"]
            spec = student_spec(
                self.cfg.model,
                unwrap(self.task.student).num_classes,
                self.cfg.data.in_chans,
                unwrap(self.task.student).embed_dim,
            )
            export_student(
                self.run_dir,
                model,
                spec,
                {
                    "class_names": train.class_names,
                    "preprocess": preprocess_config(self.cfg.data),
                    "train_counts": train.class_counts().tolist(),
                    "eval": self.eval_spec.to_json(),
                },
            )
            summary = evaluate_run(model, self.manifests, self.cfg, self.eval_spec, self.device, self.history)
            summary["selected"] = selected
            summary["timings"] = {
                "train_s": round(train_time, 2),
                "steps": self.global_step,
                "skipped_images": self.skipped,
                "skipped_files": sorted(self.skipped_files),
            }
            from vlmkd.utils.provenance import finish_run

            summary["artifacts"] = finish_run(self.run_dir, self.cfg.text)
            from vlmkd.eval.report import write_report, write_summary

            if summary.get("generalized"):  # calibration.json (+ score_norm.safetensors): export and predict
                from vlmkd.eval.generalized import save_calibration

                save_calibration(self.run_dir, summary["generalized"])
            write_summary(self.run_dir, summary)  # confusion matrices go to confusion.npz, never in here

            write_report(self.run_dir, summary)
        barrier()
        return summary


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    return Trainer(cfg, run_dir, resume).fit()
