"""`vlmkd teach`: the teacher-feature cache (reuse, resume, keys, augmented views) and OOD training on it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_image_folder
from helpers_tiny_models import make_tiny_hf_clip, make_tiny_open_clip
from vlmkd.cli import main
from vlmkd.config import ClipTeacherConfig, load_config
from vlmkd.data import build_manifests
from vlmkd.errors import ConfigError
from vlmkd.teachers.clip import load_clip_teacher
from vlmkd.teachers.features import cache_folder, teacher_features

CLASSES = ("cat", "dog", "owl")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("teach")
    clip = make_tiny_hf_clip(base / "clip")
    data = make_image_folder(base / "data", classes=CLASSES, per_class=(8, 8, 8), size=16)
    return {"base": base, "clip": Path(clip), "data": data}


@pytest.fixture(scope="module")
def teacher(tiny):
    return load_clip_teacher(f"hf:{tiny['clip']}")


def write_config(path: Path, tiny: dict, cache: Path, **sections) -> Path:
    cfg = {
        "data": {
            "format": "image_folder",
            "root": str(tiny["data"]),
            "image_size": 16,
            "in_chans": 3,
            "batch_size": 8,
            "eval_batch_size": 16,
        },
        "clip": {"name": f"hf:{tiny['clip']}", "batch_size": 4, "cache_dir": str(cache)},
        "train": {"device": "cpu"},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(cfg))
    return path


def short_run(tmp_path: Path, steps: int) -> dict:
    """The `train` section of a few logged steps."""
    return {
        "epochs": 1,
        "max_steps": steps,
        "output_dir": str(tmp_path / "runs"),
        "tensorboard": False,
        "log_every": 1,
    }


def hf_class_texts(tmp_path: Path, tiny: dict, cache: Path, **classtext) -> Path:
    """`vlmkd classtext` for all classes, embedded by the tiny HF CLIP's own text tower; the embeddings folder."""
    ct_cfg = write_config(
        tmp_path / "ct.yaml",
        tiny,
        cache,
        classtext={"output": str(tmp_path / "ct"), **classtext},
        embed={"encoder": "hf_clip", "model": str(tiny["clip"]), "device": "cpu"},
    )
    assert main(["classtext", str(ct_cfg)]) == 0
    return next((tmp_path / "ct").glob("*/embeddings"))


class Counting:
    """Wraps a teacher: counts the images sent through encode_image, optionally fails after `fail_after` calls."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.calls, self.images = inner, fail_after, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_image(self, pixels):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated kill")
        self.calls += 1
        self.images += len(pixels)
        return self.inner.encode_image(pixels)


def train_manifest(tiny):
    cfg = load_config(None, [f"data.root={tiny['data']}", "data.format=image_folder", "data.in_chans=3"])
    return build_manifests(cfg.data)


def test_teach_cli_then_cached_reuse(tmp_path, tiny, teacher, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny, tmp_path / "cache")
    assert main(["teach", str(cfg_path), "--splits", "train,test"]) == 0
    out = capsys.readouterr().out
    cfg = load_config(cfg_path)
    ms = build_manifests(cfg.data)
    for split, n in (("train", 24), ("test", 9)):
        folder = cache_folder(teacher, ms[split], cfg.clip)
        assert f"{split}: {n} x 16 clean" in out and str(folder) in out
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["complete"] and meta["teacher_id"] == teacher.teacher_id and meta["n"] == n
        assert not list(folder.glob("shard_*.npy"))  # shards only live until features.npy is written
    counting = Counting(teacher)
    feats = teacher_features(counting, ms["train"], cfg.clip)
    assert counting.calls == 0 and feats.dtype == np.float16 and feats.shape == (24, 16)
    assert isinstance(feats, np.memmap)
    # the cached rows are the teacher's own features of the clean view (not normalised)
    from vlmkd.data.images import open_image
    from vlmkd.teachers.base import encode_pil

    direct = encode_pil(teacher, [open_image(ms["train"], i) for i in range(3)]).numpy()
    assert np.allclose(feats[:3].astype(np.float32), direct, atol=2e-2, rtol=1e-2)
    assert not np.allclose(np.linalg.norm(direct, axis=1), 1)
    assert main(["teach", str(cfg_path), "--splits", "nope"]) == 2


def test_resume_after_kill_skips_finished_shards(tmp_path, tiny, teacher):
    m = train_manifest(tiny)["train"]
    clip = ClipTeacherConfig(name=f"hf:{tiny['clip']}", batch_size=2, cache_dir=str(tmp_path / "cache"))
    dying = Counting(teacher, fail_after=5)  # shards of 4 rows, batches of 2: dies inside the third shard
    with pytest.raises(RuntimeError, match="simulated kill"):
        teacher_features(dying, m, clip, shard_size=4)
    folder = cache_folder(teacher, m, clip)
    assert sorted(p.name for p in folder.glob("shard_*.npy")) == ["shard_00000.npy", "shard_00001.npy"]
    assert not (folder / "features.npy").exists()
    again = Counting(teacher)
    feats = np.asarray(teacher_features(again, m, clip, shard_size=1000))  # the run's own shard size is kept
    assert again.images == len(m) - 8  # the two finished shards were not recomputed
    fresh = teacher_features(teacher, m, dataclasses.replace(clip, cache_dir=str(tmp_path / "fresh")))
    assert np.array_equal(feats, np.asarray(fresh))


def test_key_changes_with_teacher_revision_view_and_manifest(tmp_path, tiny, teacher):
    ms = train_manifest(tiny)
    clip = ClipTeacherConfig(name=f"hf:{tiny['clip']}", cache_dir=str(tmp_path))
    base = cache_folder(teacher, ms["train"], clip)
    copy = make_tiny_hf_clip(tmp_path / "other_clip", seed=1)
    other = load_clip_teacher(f"hf:{copy}")
    revised = load_clip_teacher(f"hf:{tiny['clip']}", revision="v2")  # local folder: revision is recorded
    folders = {
        base,
        cache_folder(other, ms["train"], dataclasses.replace(clip, name=f"hf:{copy}")),
        cache_folder(revised, ms["train"], dataclasses.replace(clip, revision="v2")),
        cache_folder(teacher, ms["test"], clip),
        cache_folder(teacher, ms["train"].subset(range(23)), clip),
        cache_folder(teacher, ms["train"], dataclasses.replace(clip, view="augmented_k", num_views=2)),
        cache_folder(teacher, ms["train"], dataclasses.replace(clip, pre_resize=256)),
    }
    assert len(folders) == 7
    assert cache_folder(teacher, ms["train"], dataclasses.replace(clip, num_views=5, batch_size=7)) == base
    with pytest.raises(ConfigError, match="runs the teacher live"):
        teacher_features(teacher, ms["train"], dataclasses.replace(clip, view="consistent"))


def test_augmented_views_deterministic(tmp_path, tiny, teacher):
    m = train_manifest(tiny)["train"].subset(range(6))
    clip = ClipTeacherConfig(
        name=f"hf:{tiny['clip']}",
        view="augmented_k",
        num_views=3,
        batch_size=4,
        cache_dir=str(tmp_path / "a"),
    )
    a = np.asarray(teacher_features(teacher, m, clip, shard_size=4))
    b = np.asarray(teacher_features(teacher, m, dataclasses.replace(clip, cache_dir=str(tmp_path / "b"))))
    clean = np.asarray(teacher_features(teacher, m, dataclasses.replace(clip, view="clean")))
    assert a.shape == (6, 3, 16) and a.dtype == np.float16 and np.array_equal(a, b)
    assert not np.allclose(a[:, 0], a[:, 1]) and not np.allclose(a[:, 0], clean)


def test_ood_training_on_cached_features_and_teacher_eval(tmp_path, tiny, capsys):
    cache = tmp_path / "cache"
    classtext = hf_class_texts(tmp_path, tiny, cache, templates=["a photo of a {name}.", "a {name}"])
    cfg_path = write_config(
        tmp_path / "ood.yaml",
        tiny,
        cache,
        data={"split": {"num_novel": 1, "seed": 0}},
        model={"name": "cnn_tiny", "head": "embedding"},
        losses={
            "cls": {"name": "vl_cls", "weight": 1.0, "args": {}},
            "mse": {"name": "mse", "weight": 1.0, "args": {}},
        },
        text={"class_embeddings": str(classtext)},
        optim={"name": "sgd", "lr": 0.05},
        train=short_run(tmp_path, 3),
        eval={"every": 1, "select_on": "id"},
    )
    assert main(["teach", str(cfg_path)]) == 0
    (folder,) = [p.parent for p in cache.glob("*/features.npy")]
    stamp = (folder / "features.npy").stat().st_mtime_ns
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--run-dir", str(run)]) == 0
    assert (
        folder / "features.npy"
    ).stat().st_mtime_ns == stamp  # training read the cache, did not rebuild it
    assert len(list(cache.glob("*/features.npy"))) == 1
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss/mse"] > 0 and "loss/cls" in first  # the mse term ran on the cached teacher features
    summary = json.loads((run / "summary.json").read_text())
    assert {"id", "ood_test"} <= set(summary["splits"])
    capsys.readouterr()
    assert main(["eval", str(run), "--teacher", "--out", str(tmp_path / "t.json")]) == 0
    printed = capsys.readouterr().out
    assert "id: overall=" in printed and "ood_test: overall=" in printed
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["teacher"].startswith(f"hf:{tiny['clip']}")
    assert len(t["splits"]["ood_test"]["per_class"]) == 1 and len(t["splits"]["id"]["per_class"]) == 2
    rep_out = tmp_path / "rep.json"
    assert main(["eval", str(run), "--representation", "eval.generalized=true", "--out", str(rep_out)]) == 0
    rep = json.loads(rep_out.read_text())
    assert 0.0 <= rep["representation"]["id"]["m_rel"] <= 1.0 and "m_vlalign@2" in rep["representation"]["id"]
    # generalized: X_ood among base + novel texts together (3 classes here)
    assert rep["splits"]["ood_test_generalized"]["classes_scored_among"] == 3
    for method in ("finetune", "tip_adapter"):  # 5-shot adaptation to the novel class, both protocols
        out = tmp_path / f"fs_{method}.json"
        args = ["eval", str(run), "--few-shot", "5", "--few-shot-method", method, "--few-shot-steps", "2"]
        assert main([*args, "--out", str(out)]) == 0
        fs = json.loads(out.read_text())["splits"]["ood_test_5shot"]
        assert fs["shots"] == 5 and fs["method"] == method and 0.0 <= fs["overall"] <= 1.0


@pytest.mark.parametrize("view", ["augmented_k", "consistent"])
def test_ood_training_with_augmented_and_consistent_views(tmp_path, tiny, view):
    """K cached augmented views (one sampled per step) and the live teacher on the student's own crop."""
    cache = tmp_path / "cache"
    classtext = hf_class_texts(tmp_path, tiny, cache)
    cfg_path = write_config(
        tmp_path / "ood.yaml",
        tiny,
        cache,
        clip={"view": view, "num_views": 2},
        model={"name": "cnn_tiny", "head": "embedding"},
        losses={"cls": {"name": "vl_cls"}, "mse": {"name": "mse", "weight": 1.0}},
        text={"class_embeddings": str(classtext)},
        train=short_run(tmp_path, 2),
    )
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--run-dir", str(run)]) == 0
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss/mse"] > 0
    cached = list(cache.glob("*/features.npy"))
    if view == "augmented_k":  # N x K x D on disk, one view per sample and step in the batch
        assert len(cached) == 1 and np.load(cached[0]).shape[1] == 2
    else:  # the live teacher needs no cache
        assert cached == []


def test_open_clip_teacher_through_teach_train_and_eval(tmp_path, tiny, capsys):
    """The same OOD path with a tiny open_clip teacher: class texts by its text tower, cached image features, the
    full alignment loss (vl_cls + im_cst + vlprox), then the teacher's own zero-shot evaluation."""
    pytest.importorskip("open_clip")
    arch, ckpt = make_tiny_open_clip(tmp_path / "oc")
    cache = tmp_path / "cache"
    cfg_path = write_config(
        tmp_path / "oc.yaml",
        tiny,
        cache,
        clip={"name": f"open_clip:{arch}/{ckpt}"},
        classtext={"output": str(tmp_path / "ct")},
        embed={"encoder": "open_clip", "model": f"{arch}/{ckpt}", "device": "cpu"},
        model={"name": "cnn_tiny", "head": "embedding"},
        losses={
            "cls": {"name": "vl_cls"},
            "im_cst": {"name": "im_cst", "weight": 1.0},
            "vlprox": {"name": "vlprox", "weight": 1.0, "args": {"k": 2}},
        },
        train=short_run(tmp_path, 2),
    )
    assert main(["classtext", str(cfg_path)]) == 0
    classtext = next((tmp_path / "ct").glob("*/embeddings"))
    over = [f"text.class_embeddings={classtext}", "data.split.num_novel=1"]
    assert main(["teach", str(cfg_path), *over]) == 0
    assert len(list(cache.glob("*/features.npy"))) == 1
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--run-dir", str(run), *over]) == 0
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss/im_cst"] > 0 and "loss/vlprox" in first
    assert len(list(cache.glob("*/features.npy"))) == 1  # training read the cache
    capsys.readouterr()
    assert main(["eval", str(run), "--teacher"]) == 0
    out = capsys.readouterr().out
    assert "id: overall=" in out and "ood_test: overall=" in out


def test_zero_shot_kd_from_clip_teacher_live_matches_cached(tmp_path, tiny):
    """teacher.name=clip: KD logits from the cached clean features equal the live classifier on the same view."""
    from vlmkd.data.dataset import ManifestDataset, collate_skip
    from vlmkd.data.transforms import build_transform
    from vlmkd.tasks.build import build_task

    cache = tmp_path / "cache"
    classtext = hf_class_texts(tmp_path, tiny, cache)
    losses = {}
    for mode in ("live", "cached"):
        cfg_path = write_config(
            tmp_path / f"{mode}.yaml",
            tiny,
            cache,
            data={
                "image_size": 32,
                "augment": "none",
                "mean": [0.48145466, 0.4578275, 0.40821073],
                "std": [0.26862954, 0.26130258, 0.27577711],
            },
            model={"name": "cnn_tiny"},
            losses={
                "cls": {"name": "balanced_softmax"},
                "kd": {"name": "kd", "weight": 1.0, "args": {"temperature": 2.0, "logit_adjust": True}},
            },
            teacher={"name": "clip", "mode": mode, "zero_shot_temperature": 0.05},
            text={"class_embeddings": str(classtext)},
        )
        cfg = load_config(cfg_path)
        ms = build_manifests(cfg.data)
        torch.manual_seed(0)
        task, extras, _ = build_task(cfg, ms, torch.device("cpu"))
        assert ("teacher_logits" in extras) == (mode == "cached")
        assert not any(n.startswith("vision_teacher") for n in task.state_dict())  # never checkpointed
        ds = ManifestDataset(ms["train"], build_transform(cfg.data, train=True), extras)
        batch = collate_skip([ds[i] for i in range(8)])
        task.train()
        losses[mode] = {k: float(v.detach()) for k, v in task(batch).items() if k.startswith("loss")}
    assert losses["live"]["loss/kd"] > 0
    for k in losses["live"]:
        assert losses["cached"][k] == pytest.approx(losses["live"][k], rel=1e-2, abs=1e-4)
    cfg.teacher.mode = "consistent"  # the view names belong to clip.view; teacher.mode is live | cached
    with pytest.raises(ConfigError, match="teacher.mode must be live or cached"):
        build_task(cfg, ms, torch.device("cpu"))


def test_squash_before_the_teachers_preprocessing(tmp_path, tiny, teacher):
    """clip.pre_resize=N (the OOD paper's 256): each image is squashed to N x N, then the teacher's own transform."""
    from PIL import Image
    from torchvision import transforms as T

    from vlmkd.data.images import open_image

    root = tmp_path / "wide"
    for c in CLASSES:
        (root / "train" / c).mkdir(parents=True)
        for i in range(2):  # non-square: squashing and the teacher's shorter-side resize disagree
            arr = np.random.default_rng(i + 7 * len(c)).integers(0, 255, (20, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "train" / c / f"{i}.png")
    cfg = load_config(None, [f"data.root={root}", "data.format=image_folder", "data.in_chans=3"])
    m = build_manifests(cfg.data)["train"]
    clip = ClipTeacherConfig(name=f"hf:{tiny['clip']}", cache_dir=str(tmp_path / "c"), pre_resize=64)
    feats = np.asarray(teacher_features(teacher, m, clip), dtype=np.float32)
    pixels = torch.stack([teacher.preprocess(T.Resize((64, 64))(open_image(m, i))) for i in range(len(m))])
    np.testing.assert_allclose(feats, teacher.encode_image(pixels).float().numpy(), rtol=1e-2, atol=2e-3)
    plain = np.asarray(
        teacher_features(teacher, m, dataclasses.replace(clip, pre_resize=None)), dtype=np.float32
    )
    assert not np.allclose(plain, feats, atol=1e-2)
    from vlmkd.tasks.sources import check_same_space

    with pytest.raises(ConfigError, match=r"\(16-d\) and class texts \(384-d\) are in different spaces"):
        check_same_space(16, 384)  # e.g. class texts embedded by MiniLM for a CLIP teacher
