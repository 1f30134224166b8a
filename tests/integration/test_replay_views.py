"""Replayed views (clip.view=replay): `vlmkd teach` caches K views drawn from the student's own training transform
with their parameters; training replays one per (seed, epoch, sample), so the student's crop is the teacher's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_image_folder
from helpers_tiny_models import make_tiny_hf_clip
from vlmkd.cli import main
from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.images import open_image
from vlmkd.data.transforms import build_transform, preprocess_config
from vlmkd.tasks.rows import ReplayRows
from vlmkd.teachers.clip import load_clip_teacher
from vlmkd.teachers.features import cache_folder
from vlmkd.teachers.replay import view_seed
from vlmkd.teachers.view import TeacherView
from vlmkd.utils.rng import seeded_call

CLIP_STATS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("replay")
    clip = make_tiny_hf_clip(base / "clip")
    # 32 px, the tiny teacher's input size: with no augmentation the student's view is the teacher's clean view
    data = make_image_folder(base / "data", per_class=(8, 8, 8), size=32)
    return {"base": base, "clip": Path(clip), "data": data}


def write_config(path: Path, tiny: dict, **sections) -> Path:
    cfg = {
        "data": {
            "format": "image_folder",
            "root": str(tiny["data"]),
            "image_size": 32,
            "in_chans": 3,
            "batch_size": 8,
            "eval_batch_size": 16,
            **CLIP_STATS,
        },
        "clip": {
            "name": f"hf:{tiny['clip']}",
            "view": "replay",
            "num_views": 3,
            "batch_size": 4,
            "cache_dir": str(path.parent / "feats"),
        },
        "train": {
            "device": "cpu",
            "tensorboard": False,
            "log_every": 1,
            "output_dir": str(path.parent / "runs"),
        },
        "eval": {"every": 0},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(cfg))
    return path


def replay_dataset(cfg, seed: int = 0):
    ms = build_manifests(cfg.data)
    teacher = load_clip_teacher(cfg.clip.name)
    folder = cache_folder(teacher, ms["train"], cfg.clip, cfg.data)
    rows = ReplayRows(folder / "features.npy", folder / "params.npy", seed)
    ds = ManifestDataset(ms["train"], build_transform(cfg.data, train=True), {"teacher_features": rows})
    ds.seed = seed
    return ds, teacher, folder


def test_replayed_view_is_the_crop_the_teacher_saw_pixel_for_pixel(tmp_path, tiny):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny, data={"augment": "basic"}))
    assert main(["teach", str(tmp_path / "c.yaml")]) == 0
    ds, teacher, folder = replay_dataset(cfg)
    feats, params = np.load(folder / "features.npy"), np.load(folder / "params.npy")
    assert feats.shape == (24, 3, 16) and params.shape == (24, 3, 9) and params.dtype == np.int32
    tf, view = (
        build_transform(cfg.data, train=True),
        TeacherView(preprocess_config(cfg.data), teacher.preprocess_config()),
    )
    seen = set()
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        for i in range(0, 24, 3):
            item = ds[i]
            v = item["view"]
            seen.add(v)
            # the teacher's view: the training transform's own draw for (sample, view), as `teach` made it
            drawn, p = seeded_call(
                tf.draw, open_image(ds.manifest, i, tf.accepts_arrays), seed=view_seed(i, v)
            )
            np.testing.assert_array_equal(params[i, v], p)
            assert torch.equal(item["image"], drawn)  # pixel for pixel
            np.testing.assert_array_equal(item["teacher_features"].numpy(), feats[i, v].astype(np.float32))
            live = teacher.encode_image(view(item["image"][None])).float()[0]
            torch.testing.assert_close(
                item["teacher_features"], live, rtol=2e-3, atol=2e-3
            )  # float16 storage
    assert seen == {0, 1, 2}  # every stored view is replayed across epochs and samples
    # the views are real augmentations: the crops differ between views of one image
    assert len({tuple(p) for p in params[0]}) == 3


def kd_config(tmp_path: Path, tiny: dict, name: str, classtext: Path, **sections) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        tiny,
        model={"name": "cnn_tiny"},
        losses={
            "cls": {"name": "balanced_softmax"},
            "kd": {"name": "kd", "weight": 1.0, "args": {"temperature": 2.0, "logit_adjust": True}},
        },
        text={"class_embeddings": str(classtext)},
        **sections,
    )


@pytest.fixture(scope="module")
def classtext(tiny) -> Path:
    path = write_config(
        tiny["base"] / "ct.yaml",
        tiny,
        classtext={"output": str(tiny["base"] / "ct")},
        embed={"encoder": "hf_clip", "model": str(tiny["clip"]), "device": "cpu"},
    )
    assert main(["classtext", str(path)]) == 0
    return next((tiny["base"] / "ct").glob("*/embeddings"))


def kd_losses(cfg_path: Path) -> dict[str, float]:
    from vlmkd.tasks.build import build_task

    cfg = load_config(cfg_path)
    ms = build_manifests(cfg.data)
    torch.manual_seed(0)
    task, extras, _ = build_task(cfg, ms, torch.device("cpu"))
    ds = ManifestDataset(ms["train"], build_transform(cfg.data, train=True), extras)
    ds.seed = 0
    batch = collate_skip([ds[i] for i in range(0, 24, 3)])
    task.train()
    return {k: float(v.detach()) for k, v in task(batch).items() if k.startswith("loss")}


def test_kd_over_one_unaugmented_replayed_view_equals_kd_over_the_clean_cache(tmp_path, tiny, classtext):
    teacher = {"name": "clip", "mode": "cached", "zero_shot_temperature": 0.05}
    clean = kd_losses(
        kd_config(
            tmp_path,
            tiny,
            "clean",
            classtext,
            clip={"view": "clean"},
            teacher=teacher,
            data={"augment": "none"},
        )
    )
    replay = kd_losses(
        kd_config(
            tmp_path,
            tiny,
            "replay",
            classtext,
            clip={"num_views": 1},
            teacher=teacher,
            data={"augment": "none"},
        )
    )
    assert clean["loss/kd"] > 0
    for k in clean:
        assert replay[k] == pytest.approx(clean[k], rel=1e-5, abs=1e-6), k


def test_kd_over_replayed_views_equals_the_live_consistent_teacher(tmp_path, tiny, classtext):
    """Augmented views: the cached replayed teacher gives the live consistent teacher's loss on the same crops."""
    cached = kd_config(
        tmp_path,
        tiny,
        "cached",
        classtext,
        teacher={"name": "clip", "mode": "cached", "zero_shot_temperature": 0.05},
    )
    replay = kd_losses(cached)
    live = kd_losses(
        kd_config(
            tmp_path,
            tiny,
            "live",
            classtext,
            teacher={"name": "clip", "mode": "live", "zero_shot_temperature": 0.05},
        )
    )
    # the live run draws its own crops (no stored views): give it the replayed batch instead
    from vlmkd.tasks.build import build_task

    cfg = load_config(cached)
    ms = build_manifests(cfg.data)
    torch.manual_seed(0)
    _, extras, _ = build_task(cfg, ms, torch.device("cpu"))
    ds = ManifestDataset(ms["train"], build_transform(cfg.data, train=True), extras)
    ds.seed = 0
    batch = collate_skip([ds[i] for i in range(0, 24, 3)])
    live_cfg = load_config(tmp_path / "live.yaml")
    torch.manual_seed(0)
    live_task, _, _ = build_task(live_cfg, ms, torch.device("cpu"))
    live_task.train()
    on_replayed = {k: float(v.detach()) for k, v in live_task(batch).items() if k.startswith("loss")}
    assert replay["loss/kd"] > 0
    # float16 storage of the cached features only (1.3e-4 relative seen)
    assert replay["loss/kd"] == pytest.approx(on_replayed["loss/kd"], rel=1e-3)
    # the live run on its own crops: another loss (1.1e-2 relative seen)
    assert live["loss/kd"] != pytest.approx(on_replayed["loss/kd"], rel=1e-3)


def im_cst_config(tmp_path: Path, tiny: dict, **train) -> Path:
    return write_config(
        tmp_path / "im.yaml",
        tiny,
        model={"name": "cnn_tiny", "head": "both"},
        losses={"cls": {"name": "ce"}, "im": {"name": "im_cst"}},
        optim={"name": "sgd", "lr": 0.05},
        train={"epochs": 3, **train},
    )


def test_resume_mid_epoch_with_replayed_views_is_exact(tmp_path, tiny):
    from test_train import crash_and_resume

    cfg_path = im_cst_config(tmp_path, tiny, checkpoint_every=1, epochs=2)
    assert main(["teach", str(cfg_path)]) == 0
    # 24 images, batch 8: 3 steps per epoch; the crash at step 5 is in the middle of epoch 2
    crash_and_resume(tmp_path, load_config(cfg_path), crash_at_step=5)


@pytest.mark.slow
def test_two_processes_equal_one_with_replayed_views(tmp_path, tiny):
    from safetensors.torch import load_file
    from test_ddp_equivalence import max_diff, train

    cfg_path = im_cst_config(tmp_path, tiny, max_steps=5)
    assert main(["teach", str(cfg_path)]) == 0
    assert main(["train", str(cfg_path), "--run-dir", str(tmp_path / "one")]) == 0
    one = load_file(tmp_path / "one" / "student.safetensors")
    assert max_diff(one, train(cfg_path, tmp_path / "two", 2)) < 1e-5


def test_sharded_teach_of_replayed_views_equals_one_run(tmp_path, tiny):
    """Job-array shards (`--shard I/N`) give the one-process cache, the view parameters too."""
    import dataclasses

    from vlmkd.teachers.features import teacher_features

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny, data={"augment": "randaugment"}))
    ms = build_manifests(cfg.data)
    teacher = load_clip_teacher(cfg.clip.name)
    one = dataclasses.replace(cfg.clip, cache_dir=str(tmp_path / "one"))
    ref = np.asarray(teacher_features(teacher, ms["train"], one, data_cfg=cfg.data, shard_size=5))
    ref_params = np.load(tmp_path / "one" / next((tmp_path / "one").iterdir()).name / "params.npy")
    split = dataclasses.replace(cfg.clip, cache_dir=str(tmp_path / "split"))
    assert teacher_features(teacher, ms["train"], split, data_cfg=cfg.data, shard_size=5, shard="1/2") is None
    merged = teacher_features(teacher, ms["train"], split, data_cfg=cfg.data, shard_size=5, shard="0/2")
    folder = next((tmp_path / "split").iterdir())
    np.testing.assert_array_equal(np.asarray(merged), ref)
    np.testing.assert_array_equal(np.load(folder / "params.npy"), ref_params)
    assert ref_params[..., 5:].max() >= 0  # RandAugment's ops are stored with the crop and flip


def test_a_killed_teach_of_replayed_views_resumes_from_its_finished_shards(tmp_path, tiny):
    """Every finished features shard has its parameters shard: the resumed cache equals an uninterrupted one."""
    import dataclasses

    from vlmkd.teachers.features import PARAM_PARTS, teacher_features

    class Dying:
        def __init__(self, inner, fail_after):
            self.inner, self.fail_after, self.calls = inner, fail_after, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode_image(self, pixels):
            if self.calls >= self.fail_after:
                raise RuntimeError("simulated kill")
            self.calls += 1
            return self.inner.encode_image(pixels)

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny, data={"augment": "basic"}))
    ms = build_manifests(cfg.data)
    teacher = load_clip_teacher(cfg.clip.name)
    clip = dataclasses.replace(cfg.clip, batch_size=2, cache_dir=str(tmp_path / "cut"))
    with pytest.raises(
        RuntimeError, match="simulated kill"
    ):  # shards of 4 rows, batches of 2: dies in shard 3
        teacher_features(Dying(teacher, 5), ms["train"], clip, data_cfg=cfg.data, shard_size=4)
    folder = cache_folder(teacher, ms["train"], clip, cfg.data)
    assert len(list(folder.glob("shard_*.npy"))) == 2 and len(list((folder / PARAM_PARTS).glob("*.npy"))) == 2
    resumed = np.asarray(teacher_features(teacher, ms["train"], clip, data_cfg=cfg.data))
    assert not (folder / PARAM_PARTS).exists()  # one process: its shards are removed after the merge
    fresh = dataclasses.replace(clip, cache_dir=str(tmp_path / "fresh"))
    np.testing.assert_array_equal(
        resumed, np.asarray(teacher_features(teacher, ms["train"], fresh, data_cfg=cfg.data))
    )
    fresh_folder = cache_folder(teacher, ms["train"], fresh, cfg.data)
    np.testing.assert_array_equal(np.load(folder / "params.npy"), np.load(fresh_folder / "params.npy"))
