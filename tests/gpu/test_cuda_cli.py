"""The command line end to end on CUDA (marker `gpu`): train with bf16 autocast and channels_last, eval, export,
and predict on the GPU, which must agree with predict on the CPU. Skipped where no CUDA device is present."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from test_train import tiny_config  # noqa: E402

from conftest import make_image_folder  # noqa: E402
from vlmkd.cli import main  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def predictions(tmp: Path, model: Path, images: Path, device: str) -> tuple[list[str], np.ndarray]:
    """(labels, N x 3 class probabilities) of `vlmkd predict MODEL IMAGES --device DEVICE`."""
    out = tmp / f"pred-{model.name}-{device}.json"
    args = [
        str(model),
        str(images),
        "--top-k",
        "3",
        "--format",
        "json",
        "--out",
        str(out),
        "--device",
        device,
    ]
    assert main(["predict", *args]) == 0
    recs = sorted(json.loads(out.read_text()), key=lambda r: r["path"])
    assert recs and not any(r["error"] for r in recs)
    probs = np.zeros((len(recs), 3))
    for i, r in enumerate(recs):
        for t in r["top_k"]:
            probs[i, t["index"]] = t["score"]
    return [r["label"] for r in recs], probs


def test_cli_train_eval_export_predict_on_cuda(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=(24, 16, 12), size=32)
    train = {"device": "cuda", "amp": True, "channels_last": True, "epochs": 2}
    cfg = tiny_config(tmp_path, data, train=train, data={"image_size": 32})
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["overall"] <= 1.0
    # eval reads the run's config (train.device=cuda) and scores the saved student the way training did
    assert main(["eval", str(run), "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["overall"] == pytest.approx(
        summary["overall"], abs=1 / 9 + 1e-9
    )  # 9 test images: one may flip

    export = tmp_path / "ts"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(export), "--no-latency"]) == 0
    for model in (run, export):
        gpu_labels, gpu_probs = predictions(tmp_path, model, data, "cuda")
        cpu_labels, cpu_probs = predictions(tmp_path, model, data, "cpu")
        # fp32 weights on both; cuDNN's TF32 convolutions keep ~3 significant digits
        np.testing.assert_allclose(gpu_probs, cpu_probs, atol=5e-3)
        close = np.sort(cpu_probs, axis=1)[:, -1] - np.sort(cpu_probs, axis=1)[:, -2] < 1e-2
        assert all(g == c for g, c, tie in zip(gpu_labels, cpu_labels, close) if not tie)
