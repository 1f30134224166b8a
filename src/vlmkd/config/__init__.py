"""Typed configuration.

A run is described by one `Config` (dataclasses). YAML files only override fields of the defaults; they never
import or instantiate classes. Dotted CLI overrides (`train.epochs=3`, `losses.cls.name=balanced_softmax`) are
applied last. Unknown keys are errors that name the closest valid key. The resolved config is saved per run.

`losses:` is the one section a YAML file states whole: a recipe's `losses:` REPLACES the terms it would inherit
(the default `cls: ce`, or its `base:` recipe's terms) instead of merging with them, so a recipe trains exactly
the terms it lists, and each listed term names its loss. Dotted overrides still edit or add single terms
(`losses.kd.weight=0`, `losses.kd.name=kd`). Every field is checked against its type, union and list items
included: `data.split.novel_classes=[no,3]` is an error (YAML reads `no` as false), not [False, 3].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlmkd.config.data import DataConfig, LongTailConfig, SplitConfig
from vlmkd.config.loading import (
    deep_merge,
    from_dict,
    merge_layer,
    parse_override,
    read_yaml,
    set_dotted,
    to_dict,
)
from vlmkd.config.stages import (
    ClassTextConfig,
    ClipTeacherConfig,
    DescribeConfig,
    DomainTeacherConfig,
    EmbedConfig,
)
from vlmkd.config.training import (
    EvalConfig,
    LossTerm,
    ModelConfig,
    OptimConfig,
    TextSupervisionConfig,
    TrainConfig,
    VisionTeacherConfig,
    default_losses,
)
from vlmkd.errors import ConfigError
from vlmkd.utils.io import atomic_write


@dataclass
class Config:
    task: str = "distill"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: dict[str, LossTerm] = field(default_factory=default_losses)
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

    def __post_init__(self) -> None:
        if not self.losses:
            raise ConfigError("losses: no loss term; name at least one, e.g. losses.cls.name=ce")


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> Config:
    """Defaults <- YAML file (with optional `base:` chain) <- dotted overrides, then validated."""
    raw = to_dict(Config())
    if base:
        raw = merge_layer(raw, base, "base recipe")
    if path is not None:
        raw = merge_layer(raw, read_yaml(path), str(path))
    for ov in overrides:  # dotted overrides edit single terms: losses.kd.weight=0, losses.vl.name=vl_cls
        keys, value = parse_override(ov)
        set_dotted(raw, keys, value)
    return from_dict(Config, raw)


def save_config(cfg: Config, path: str | Path) -> None:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


__all__ = [
    "ClassTextConfig",
    "ClipTeacherConfig",
    "Config",
    "DataConfig",
    "DescribeConfig",
    "DomainTeacherConfig",
    "EmbedConfig",
    "EvalConfig",
    "LongTailConfig",
    "LossTerm",
    "ModelConfig",
    "OptimConfig",
    "SplitConfig",
    "TextSupervisionConfig",
    "TrainConfig",
    "VisionTeacherConfig",
    "deep_merge",
    "from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
    "to_dict",
]
