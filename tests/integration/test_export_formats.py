"""Export round trips: ONNX (onnxruntime), TorchScript and safetensors match PyTorch; files and model card."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlmkd.cli import main
from vlmkd.engine.checkpoint import export_student, load_student
from vlmkd.export import export_model
from vlmkd.predict import load_model
from vlmkd.students import create_student

PRE = {
    "image_size": 16,
    "in_chans": 3,
    "mean": [0.5, 0.4, 0.3],
    "std": [0.25, 0.2, 0.3],
    "resize": 16,
    "interpolation": "bilinear",
    "crop": "center",
}


def make_run(run: Path, head: str = "both", name: str = "cnn_tiny", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    spec = {
        "name": name,
        "num_classes": 3,
        "in_chans": 3,
        "head": head,
        "embed_dim": 8,
        "proj_type": "linear",
    }
    s = create_student(name, num_classes=3, in_chans=3, head=head, embed_dim=8)
    for m in s.modules():  # non-trivial BatchNorm statistics, so eval-mode folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    export_student(
        run,
        s,
        spec,
        {
            "class_names": ["cat", "dog", "owl"],
            "preprocess": PRE,
            "train_counts": [6, 4, 2],
            "eval": {"mode": "logits", "temperature": 0.07},
        },
    )
    (run / "summary.json").write_text(
        json.dumps(
            {
                "dataset": "image_folder",
                "splits": {
                    "test": {"overall": 0.5, "mean_per_class": 0.4, "many": 0.6, "medium": 0.3, "few": 0.1}
                },
            }
        )
    )
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "run")


def _torch_out(run_dir: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    student, _ = load_student(run_dir)
    with torch.no_grad():
        out = student(torch.from_numpy(x))
    return {k: out[k].numpy() for k in ("logits", "embedding")}


def test_onnx_matches_pytorch_with_onnxruntime(run_dir, tmp_path):
    import onnx
    import onnxruntime as ort

    out = export_model(run_dir, "onnx", tmp_path / "onnx", measure_latency=False)
    model = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "embedding"]
    for batch in (1, 5):  # the batch axis is dynamic
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        logits, emb = sess.run(None, {"image": x})
        ref = _torch_out(run_dir, x)
        np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(emb, ref["embedding"], atol=1e-4, rtol=0)
    rec = json.loads((out / "export.json").read_text())
    assert rec["format"] == "onnx" and rec["max_abs_diff_vs_torch"] < 1e-4


def test_torchscript_matches_pytorch(run_dir, tmp_path):
    out = export_model(run_dir, "torchscript", tmp_path / "ts", measure_latency=False)
    m = torch.jit.load(str(out / "model.torchscript.pt"))
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    logits, emb = m(torch.from_numpy(x))
    ref = _torch_out(run_dir, x)
    np.testing.assert_allclose(logits.detach().numpy(), ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(emb.detach().numpy(), ref["embedding"], atol=1e-4, rtol=0)


def test_safetensors_round_trip_loads_with_load_student(run_dir, tmp_path):
    out = export_model(run_dir, "safetensors", tmp_path / "st", measure_latency=False)
    a, b = load_file(str(run_dir / "student.safetensors")), load_file(str(out / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    student, meta = load_student(out)
    assert meta["spec"]["name"] == "cnn_tiny" and meta["class_names"] == ["cat", "dog", "owl"]
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(load_model(out).logits(x), _torch_out(run_dir, x)["logits"], atol=1e-6)


def test_cli_export_writes_preprocess_and_model_card(run_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert "exported onnx" in capsys.readouterr().out
    for f in ("model.onnx", "preprocess.json", "classes.json", "export.json", "MODEL_CARD.md"):
        assert (out / f).is_file(), f
    pre = json.loads((out / "preprocess.json").read_text())
    assert {k: pre[k] for k in PRE} == PRE and pre["color"] == "RGB"
    card = (out / "MODEL_CARD.md").read_text()
    assert "parameters:" in card and "FLOPs at batch 1:" in card and "batch32" in card
    assert "50.00%" in card and "Novel-class zero-shot accuracy: not measured" in card
    assert json.loads((out / "classes.json").read_text())["names"] == ["cat", "dog", "owl"]


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "student.json" in err
    run = make_run(tmp_path / "cls", head="classifier")
    assert main(["export", str(run), "--head", "zero_shot", "--no-latency"]) == 2
    assert "no embedding head" in capsys.readouterr().err
