"""A training run, composed: config -> manifests -> providers -> task -> evaluator -> `Trainer(task, data, ...)`.

The shape of open_clip's `main.py` (build model, data, loss, optimizer, then hand them to `train_one_epoch`) and
timm's `train.py`: the loop (vlmkd.engine) receives everything it runs, and the end of the run (evaluation on
every split, the shipped student, the report) is composed here too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmkd.config import Config, save_config
from vlmkd.data import build_manifests
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.manifest import Manifest
from vlmkd.data.samplers import build_sampler, worker_init
from vlmkd.data.transforms import build_transform, preprocess_config
from vlmkd.engine.optim import build_optimizer, build_scheduler
from vlmkd.engine.selection import METRIC, check_select_on
from vlmkd.engine.trainer import FitResult, TrainData, Trainer
from vlmkd.errors import ConfigError
from vlmkd.eval.evaluate import evaluate_run, evaluate_split
from vlmkd.eval.generalized import save_calibration
from vlmkd.eval.report import write_report, write_summary
from vlmkd.students import student_spec
from vlmkd.students.io import export_student
from vlmkd.tasks.build import EvalSpec, build_task
from vlmkd.tasks.distill import DistillTask
from vlmkd.tasks.providers import BuildContext, kd_teacher_classifier
from vlmkd.utils import provenance
from vlmkd.utils.device import resolve_device
from vlmkd.utils.dist import DistInfo, barrier, get_info, init_distributed, reseed_per_rank

log = logging.getLogger(__name__)


def make_run_dir(cfg: Config, stem: str = "run") -> Path:
    name = cfg.train.name or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.train.output_dir) / name


@dataclass
class TrainingRun:
    """A composed run: `fit()` trains, evaluates every split, ships the student and writes the run folder."""

    cfg: Config
    run_dir: Path
    info: DistInfo
    device: torch.device
    manifests: dict[str, Manifest]
    task: DistillTask
    eval_spec: EvalSpec
    trainer: Trainer

    def fit(self) -> dict[str, Any]:
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
            for split, m in self.manifests.items():
                m.save(self.run_dir / "manifests" / f"{split}.json")
        result = self.trainer.fit()
        # evaluation, export and selection read the selected state, learned class texts included
        self.eval_spec = self.eval_spec.for_state(result.model)
        return self._finish(result)

    def _finish(self, result: FitResult) -> dict[str, Any]:
        cfg, model = self.cfg, result.model
        if self.info.is_main:
            train = self.manifests["train"]
            spec = student_spec(cfg.model.name, model.student, cfg.data.in_chans, cfg.model.proj_type)
            extra = {
                "class_names": train.class_names,
                "preprocess": preprocess_config(cfg.data),
                "train_counts": train.class_counts().tolist(),
                "eval": self.eval_spec.to_json(),
            }
            export_student(self.run_dir, model.student, spec, extra)
        summary = evaluate_run(
            model.student, self.manifests, cfg, self.eval_spec, self.device, result.history, shard=True
        )
        if cfg.eval.teacher_accuracy and "teacher_logits" in self.task.providers:
            check = teacher_check(cfg, self.manifests, self.device, summary)
            if check:
                summary["kd_teacher"] = check
        if self.info.is_main:
            summary["selected"] = result.selected
            summary["timings"] = {
                "train_s": result.train_s,
                "steps": result.steps,
                "skipped_images": result.skipped_images,
                "skipped_files": result.skipped_files,
            }
            summary["artifacts"] = provenance.finish_run(self.run_dir, cfg.text)
            if summary.get("generalized"):  # calibration.json (+ score_norm.safetensors): export and predict
                save_calibration(self.run_dir, summary["generalized"])
            write_summary(self.run_dir, summary)  # confusion matrices go to confusion.npz, never in here
            write_report(self.run_dir, summary)
        barrier()
        return summary if self.info.is_main else {}


class _LogitsOut(nn.Module):
    """A teacher classifier in the student's output form, so the student's evaluation loop scores it."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.classifier(images)}


def teacher_check(
    cfg: Config, manifests: dict[str, Manifest], device: torch.device, summary: dict[str, Any]
) -> dict[str, Any] | None:
    """The KD teacher's own accuracy on the selection split next to the student's (every rank calls it: the
    evaluation is sharded), with a warning when the student ends above its teacher. None where the split is
    missing, scores other classes than the training ones, or the teacher is not at hand (a reinforced dataset)."""
    split = cfg.eval.select_on
    m, student = manifests.get(split), summary["splits"].get(split)
    if m is None or student is None or m.class_names != manifests["train"].class_names:
        return None
    built = kd_teacher_classifier(BuildContext(cfg, manifests, device))
    if built is None:
        return None
    classifier, teacher_id = built
    metrics = evaluate_split(_LogitsOut(classifier), manifests, split, cfg, EvalSpec(), device, shard=True)
    check = {
        "teacher": teacher_id,
        "split": split,
        "metric": METRIC,
        "teacher_score": metrics[METRIC],
        "student_score": student[METRIC],
        "teacher_overall": metrics["overall"],
        "weaker_than_student": metrics[METRIC] < student[METRIC],
    }
    if check["weaker_than_student"] and get_info().is_main:
        log.warning(
            "the KD teacher scores %.1f%% on %s (%s), below the student it taught (%.1f%%): KD from a weaker "
            "teacher pulls the student toward its errors; train the labels-only baseline (losses.kd.weight=0) "
            "and keep KD only if it wins on %s",
            100 * metrics[METRIC],
            split,
            METRIC,
            100 * student[METRIC],
            split,
        )
    return check


def build_run(cfg: Config, run_dir: str | Path, resume: bool = False) -> TrainingRun:
    """Compose a training run from its config (every rank under torchrun calls this)."""
    check_select_on(cfg.eval.select_on)
    if cfg.train.epochs < 1 and not cfg.train.max_steps:
        raise ConfigError(f"train.epochs={cfg.train.epochs} trains nothing; give train.epochs >= 1")
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    device = resolve_device(cfg.train.device, info.local_rank)
    torch.manual_seed(cfg.train.seed)  # identical init on every rank
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    manifests = build_manifests(cfg.data)
    provenance.start_run()  # artifacts.json names what this run's build_task reads
    task, extras, eval_spec = build_task(cfg, manifests, device)
    task.to(device)
    if cfg.train.precision not in ("float32", "float64"):
        raise ConfigError(f"train.precision must be float32 or float64, got {cfg.train.precision!r}")
    if cfg.train.precision == "float64":
        if device.type != "cpu":
            raise ConfigError("train.precision=float64 is for CPU equivalence checks; set train.device=cpu")
        task.double()
    reseed_per_rank(cfg.train.seed, info.rank)  # after init: dropout differs per rank, the weights do not
    data = train_data(cfg, manifests["train"], extras, info)
    optimizer = build_optimizer(task.trainable_parameters(), cfg.optim)
    total = data.steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    scheduler = build_scheduler(optimizer, cfg.optim, total, data.steps_per_epoch)

    def evaluator(state: torch.nn.Module, split: str) -> dict[str, Any] | None:
        if split not in manifests or (split.startswith("ood") and eval_spec.mode == "logits"):
            return None
        spec = eval_spec.for_state(state)
        return evaluate_split(state.student, manifests, split, cfg, spec, device, shard=True)

    trainer = Trainer(
        task,
        task.state,
        data,
        optimizer,
        scheduler,
        train_cfg=cfg.train,
        run_dir=run_dir,
        info=info,
        device=device,
        evaluator=evaluator,
        eval_splits=[cfg.eval.select_on, *cfg.eval.track],
        eval_every=cfg.eval.every,
        select_on=cfg.eval.select_on,
        grad_clip=cfg.optim.grad_clip,
        total_steps=total,
        resume=resume,
    )
    return TrainingRun(cfg, Path(run_dir), info, device, manifests, task, eval_spec, trainer)


def train_data(cfg: Config, train: Manifest, extras: dict[str, Any], info: DistInfo) -> TrainData:
    """The training set, its epoch-seeded sampler (this rank's share) and the per-process batch."""
    if cfg.data.batch_size % info.world_size:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} must be divisible by the {info.world_size} processes"
        )
    dataset = ManifestDataset(
        train, build_transform(cfg.data, train=True), extras, cfg.data.on_bad_image, replace_bad=True
    )
    dataset.seed = cfg.train.seed  # augmentation is a function of (seed, epoch, sample)
    sampler = build_sampler(cfg.data.sampler, train.labels, info.world_size, info.rank, cfg.train.seed)
    return TrainData(
        dataset,
        sampler,
        cfg.data.batch_size // info.world_size,
        cfg.data.num_workers,
        collate_skip,
        worker_init,
    )


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    return build_run(cfg, run_dir, resume).fit()
