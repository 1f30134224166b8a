"""Data: formats -> manifests, long-tail tools, samplers, transforms, datasets."""

from __future__ import annotations

from vlmkd.config import DataConfig
from vlmkd.data.formats import FORMATS, list_formats
from vlmkd.data.longtail import base_novel_split, hashed_holdout, make_longtail, stratified_holdout
from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError, DataError

__all__ = ["Manifest", "build_manifests", "list_formats"]


def build_manifests(cfg: DataConfig, every_class_trained: bool = True) -> dict[str, Manifest]:
    """All splits of the configured dataset, after long-tail subsampling and the optional base/novel split.

    Keys: "train" (the student set), "test", and when configured "val", "pool" (the disjoint balanced pool),
    and for open-vocabulary runs "id" (held-out base-class images) and "ood" (all novel-class images of train and
    test, relabelled 0..num_novel-1); in that case "train"/"val"/"test" are restricted to the base classes.
    A format whose lists fix that split (ood_lists) returns "id", "ood" and "ood_test" itself.
    A class without a training image is an error (`every_class_trained=False`: `data stats`, which reports it).
    """
    splits = FORMATS.build(cfg.format, cfg=cfg)
    full_train = splits["train"]
    if len(full_train) == 0:
        raise DataError(f"the {cfg.format} training split under {cfg.root!r} has no images; check data.root")
    if "val" in splits and cfg.longtail.val_per_class:
        raise ConfigError(
            f"the {cfg.format} dataset has its own validation split; leave data.longtail.val_per_class at 0"
        )
    if cfg.longtail.val_per_class and cfg.val_fraction:
        raise ConfigError("set data.longtail.val_per_class or data.val_fraction, not both")
    out = {**{k: v for k, v in splits.items() if k != "train"}, **make_longtail(full_train, cfg.longtail)}
    if "val" not in out and cfg.val_fraction > 0:
        # membership by a hash of each image's id: adding images never moves another between train and val
        out["train"], out["val"] = hashed_holdout(out["train"], cfg.val_fraction, cfg.longtail.seed, "val")
    if "ood_test" in splits:  # the format's lists fix the base/novel split and X_id (ood_lists)
        if cfg.split.num_novel or cfg.split.novel_classes:
            raise ConfigError(
                f"data.format {cfg.format} takes its base/novel classes from the lists; "
                "leave data.split.num_novel at 0 and data.split.novel_classes unset"
            )
    elif cfg.split.num_novel or cfg.split.novel_classes:
        base, novel = base_novel_split(full_train.num_classes, cfg.split, full_train.class_names)
        ood_train = full_train.relabel(novel, "ood")
        # X_ood: every image of the novel classes, the held-out training images and the test images alike
        out["ood"] = ood_train
        if "test" in out:
            out["ood_test"] = out["test"].relabel(novel, "ood_test")
        for k in ("train", "val", "test"):
            if k in out:
                out[k] = out[k].relabel(base, k)
        out["train"], out["id"] = _id_holdout(out["train"], cfg)
        out["train"].source = {**out["train"].source, "base_classes": base, "novel_classes": novel}
    if every_class_trained:
        require_trained_classes(out["train"])
    return out


def _id_holdout(train: Manifest, cfg: DataConfig) -> tuple[Manifest, Manifest]:
    """X_id out of the base-class training images: by a hash of each image's id for data that can grow (files,
    lists, shards), so adding images moves no other one; exactly stratified for the fixed array datasets."""
    how = cfg.split.id_holdout
    if how == "auto":
        how = "stratified" if train.indices is not None else "hash"
    if how == "hash":
        return hashed_holdout(train, cfg.split.id_fraction, cfg.split.seed, "id", "data.split.id_fraction")
    return stratified_holdout(train, cfg.split.id_fraction, cfg.split.seed, "id")


def require_trained_classes(train: Manifest) -> None:
    """Refuse a class with no training image: the student cannot learn it, yet it is scored on it, and the
    long-tail losses take the log of its zero count."""
    empty = [train.class_names[c] for c in (train.class_counts() == 0).nonzero()[0]]
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no training image ({len(empty)} of {train.num_classes} classes have none); "
            "add images of it, remove it from the class folders or data.class_names_file, or hold it out as "
            "novel (data.split.novel_classes); `vlmkd data stats` shows the counts"
        )
