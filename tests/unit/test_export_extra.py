"""`vlmkd export --format onnx` without the [export] extra: one line naming the extra, not torch's traceback."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import make_image_folder
from vlmkd.cli import main


@pytest.mark.parametrize("absent", [{"onnx", "onnxscript"}, {"onnxscript"}])
def test_onnx_export_without_the_extra_names_it(tmp_path, monkeypatch, capsys, absent):
    data = make_image_folder(tmp_path / "d", per_class=(4, 4, 4), size=16)
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: distill\n")
    train = ["train", str(cfg), "--run-dir", str(run)]
    overrides = [
        "data.format=image_folder",
        f"data.root={data}",
        "data.image_size=16",
        "data.in_chans=3",
        "data.batch_size=4",
        "model.name=cnn_tiny",
        "train.max_steps=1",
        "train.epochs=1",
        "train.tensorboard=false",
        "eval.every=0",
    ]
    assert main([*train, *overrides]) == 0
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a)
    )
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x"), "--no-latency"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vlmkd export: error:")  # one line, after any log lines
    assert 'pip install "vlmkd[export]"' in err[-1] and sorted(absent)[0] in err[-1]
