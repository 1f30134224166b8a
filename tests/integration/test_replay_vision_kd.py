"""A vision teacher's KD targets on replayed views, stored as sparse top-k probabilities (teacher.view=replay)."""

import numpy as np
import pytest
import torch
from test_train import tiny_config

from conftest import make_image_folder
from vlmkd.cli import main
from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.transforms import build_transform
from vlmkd.tasks.build import build_task


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rkd")
    data = make_image_folder(tmp / "d", per_class=(12, 8, 6), size=16)
    teacher_run = tmp / "teacher"
    assert main(["train", str(tiny_config(tmp, data)), "--run-dir", str(teacher_run), "train.epochs=1"]) == 0
    return tmp, data, teacher_run


def overrides(teacher_run, mode, cache, topk=3):
    return [
        "losses.cls.name=balanced_softmax",
        "losses.kd.name=kd",
        "losses.kd.weight=1.0",
        "losses.kd.args={temperature: 2.0}",
        f"teacher.name={teacher_run}",
        f"teacher.mode={mode}",
        "teacher.view=replay",
        f"teacher.topk={topk}",
        f"teacher.cache_dir={cache}",
        "clip.num_views=4",
    ]


def batch_losses(cfg, ms, batch=None):
    torch.manual_seed(0)
    task, extras, _ = build_task(cfg, ms, torch.device("cpu"))
    if batch is None:
        ds = ManifestDataset(ms["train"], build_transform(cfg.data, train=True), extras)
        ds.seed, ds.epoch = 0, 1
        batch = collate_skip([ds[i] for i in range(0, 24, 3)])
    task.train()
    return {k: float(v.detach()) for k, v in task(batch).items() if k.startswith("loss")}, batch


def test_replayed_top_k_kd_equals_the_live_teacher_on_the_replayed_crops(setup):
    tmp, data, teacher_run = setup
    cfg = load_config(tiny_config(tmp, data), overrides(teacher_run, "cached", tmp / "cache"))
    ms = build_manifests(cfg.data)
    cached, batch = batch_losses(cfg, ms)
    folder = next((tmp / "cache").iterdir())
    assert np.load(folder / "topk_values.npy").shape == (26, 4, 3)
    assert np.load(folder / "params.npy").shape == (26, 4, 9)
    assert set(batch["view"].tolist()) > {0}  # several stored views in one batch
    live, _ = batch_losses(
        load_config(tiny_config(tmp, data), overrides(teacher_run, "live", tmp / "c2")), ms, batch
    )
    assert cached["loss/kd"] > 0
    # all 3 classes stored (k = C): the live teacher's loss on the same crops, up to float16 storage
    assert cached["loss/kd"] == pytest.approx(live["loss/kd"], rel=5e-3, abs=1e-5)


def test_training_from_top_2_of_3_classes(setup):
    tmp, data, teacher_run = setup
    cfg = tiny_config(tmp, data, train={"max_steps": 3, "epochs": 1}, eval={"every": 0})
    args = [f"--run-dir={tmp / 'run'}", *overrides(teacher_run, "cached", tmp / "cache2", topk=2)]
    assert main(["train", str(cfg), *args]) == 0
    values = np.load(next((tmp / "cache2").iterdir()) / "topk_values.npy").astype(np.float32)
    assert (
        values.shape == (26, 4, 2)
        and (values.sum(-1) <= 1.001).all()
        and (values[..., 0] >= values[..., 1]).all()
    )
