"""Config sections for training: student, losses, optimizer, loop, evaluation, teachers and text the task reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmkd.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "resnet18"  # a vlmkd student (`vlmkd.students.list_students()`) or any timm model name
    pretrained: bool = False  # students start from random init unless asked
    head: str = "classifier"  # classifier | embedding (last layer outputs embed_dim) | both
    embed_dim: int = 0  # projection / embedding dimension; 0 = infer from the text embeddings when needed
    proj_type: str = "linear"  # linear | mlp
    drop_rate: float = 0.0
    checkpoint: str | None = None  # initialise from a vlmkd checkpoint (student weights)


@dataclass
class LossTerm:
    name: str = "ce"
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)


def default_losses() -> dict[str, LossTerm]:
    return {"cls": LossTerm("ce")}


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | onecycle | constant
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])  # step: fractions or epochs
    gamma: float = 0.1
    grad_clip: float = 0.0  # max global grad norm; 0 disables


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True  # on CUDA only
    ema_decay: float = 0.0  # 0 disables the EMA copy of the student
    # checkpoints/last.pt is written at every epoch end, and every N optimizer steps with N > 0: only then does a
    # run killed mid-epoch resume mid-epoch (otherwise it repeats the epoch from its start)
    checkpoint_every: int = 0
    log_every: int = 20
    output_dir: str = "runs"
    name: str | None = None  # run folder name; default: config stem + timestamp
    deterministic: bool = False
    tensorboard: bool = True
    wandb_project: str | None = None
    # under DDP, batch-coupled loss terms (in-batch negatives) see the global batch: their inputs are all-gathered
    # with gradients, so N processes train what one process would at the same global batch
    gather: bool = True
    # with gather: each rank scores only its own rows against all columns (same gradient, less memory)
    local_loss: bool = False
    # bound on every collective under torchrun (a rank waiting while another builds an artifact or checkpoints);
    # a dead rank then fails the job after this long instead of hanging it
    dist_timeout_min: float = 60.0
    # float32, or float64 (CPU only) to check equivalences: over a whole run SGD amplifies float32 summation order
    # to visible weight differences; in float64 the same run shows a real difference apart from rounding
    precision: str = "float32"

    def __post_init__(self) -> None:
        # a run of no step used to write a full run folder and exit 0
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be at least 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(
                f"train.max_steps must be at least 1 (or null for no limit), got {self.max_steps}"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"train.checkpoint_every must be >= 0 (0: at epoch ends only), got {self.checkpoint_every}"
            )


@dataclass
class EvalConfig:
    every: int = 1  # evaluate on val every N epochs (0: only at the end)
    last_k_average: int = 5  # also report the mean of the last k evaluations (the OOD paper's protocol)
    tail_classes: int = 3  # size of the "rarest classes" group reported next to Many/Medium/Few
    select_on: str = "val"  # model selection split; never the test or the novel-class split
    # splits also scored at every evaluation, for reporting only (the OOD paper's "average of the last 5
    # epochs" on X_ood); they never select anything
    track: list[str] = field(default_factory=list)
    # also score X_id and X_ood among base + novel class texts together (the generalized setting), raw and with
    # calibrated stacking (see vlmkd.eval.generalized); the paper's restricted setting (X_id among base texts,
    # X_ood among novel texts) is always reported
    generalized: bool = False
    # how calibrated stacking chooses its seen-class penalty gamma (vlmkd.eval.generalized):
    # "support": maximise the harmonic mean of held-out base accuracy (val, else train) and novel accuracy on the
    #   K-shot support (calibration_shots training images per novel class, drawn as K-shot evaluation draws them
    #   with calibration_seed; `vlmkd eval --few-shot K --seed S` uses K and S); falls back to base_tolerance
    #   when the run has no novel-class training images;
    # "base_tolerance": no novel-class label at all: the largest gamma that costs held-out base images at most
    #   calibration_tolerance accuracy among all names
    calibration: str = "support"
    calibration_tolerance: float = 0.03
    calibration_shots: int = 5
    calibration_seed: int = 0
    # support rule: never give up more than this much held-out base accuracy (None: H alone decides)
    calibration_max_base_drop: float | None = 0.05
    # the scores gamma is applied to: "cosine"; "standardized" (each class's cosine Z-normalised over the
    # held-out images gamma is chosen on, val and support, each class weighing the same); "auto": with the
    # support rule, whichever of the two has the higher held-out objective, else cosine
    calibration_scores: str = "auto"
    # also write each split's C x C confusion matrix to confusion.npz in the run folder (never into summary.json)
    confusion: bool = False
    # a run with a KD term also scores its teacher on the select_on split, next to the student, and warns when the
    # student ends above it (KD from a weaker teacher pulls the student toward the teacher's errors)
    teacher_accuracy: bool = True


@dataclass
class VisionTeacherConfig:
    """Vision teacher for classic KD."""

    name: str | None = None  # timm model name, a vlmkd run dir or checkpoint path
    mode: str = "live"  # live (same augmented batch) | cached (artifact, clean view)
    checkpoint: str | None = None  # weights for a timm teacher
    cache_dir: str = "artifacts/teacher_logits"
    # name "clip": the `clip` teacher as a zero-shot classifier over the class texts; its logits are
    # cos(image, class text) / zero_shot_temperature (CLIP's own scale is 1/0.01). mode live runs it on the
    # student's augmented batch (consistent teaching); cached uses the `clip.view` features of `vlmkd teach`
    zero_shot_temperature: float = 0.01
    # mode cached: clean (the eval transform's view) | replay (clip.num_views views of the student's own training
    # transform, replayed for the student: consistent teaching with no teacher at training time)
    view: str = "clean"
    topk: int = 10  # view=replay: stored teacher classes per view (top-k probabilities, the rest smoothed)


@dataclass
class CoopConfig:
    """CoOp prompt learning (vlmkd.text.coop): learned context in front of the class texts, frozen text tower."""

    enabled: bool = False
    n_ctx: int = 4  # used when init is empty (random context); otherwise the init words' token count
    init: str | None = "a photo of a"
    class_specific: bool = False
    texts: str = "names"  # names ("{name}.") | class_texts (the class-text store's texts, e.g. enriched)


@dataclass
class TextSupervisionConfig:
    """Which text artifacts the training task reads (the training loop never runs a VLM)."""

    descriptions: str | None = None  # description store folder (from `vlmkd describe`)
    embeddings: str | None = None  # embedding store folder for the per-image descriptions
    class_embeddings: str | None = None  # embedding store folder for class texts (from `vlmkd classtext`)
    multi: str = "average"  # average | sample: how to use several descriptions per image
    source: str = "descriptions"  # descriptions | class_templates (ablation: "a photo of a {c}.")
    coop: CoopConfig = field(default_factory=CoopConfig)
