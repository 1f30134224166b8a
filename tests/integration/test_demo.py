"""The offline demo end to end on real Fashion-MNIST: a miniature run in the default suite, --quick when slow."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import FMNIST_DIR, needs_fmnist
from vlmkd.cli import main
from vlmkd.data.formats import _find_idx, _read_idx
from vlmkd.demo.run import DemoSettings, run_demo
from vlmkd.engine.checkpoint import load_student
from vlmkd.export.classes import read_class_store

TINY = DemoSettings(
    pool_per_class=60,
    lt_n_max=120,
    val_per_class=10,
    teacher_epochs=1,
    student_epochs=1,
    ood_per_class=30,
    ood_epochs=1,
    fewshot_steps=3,
)
LT_METHODS = {
    "ce",
    "balanced_softmax",
    "balanced_softmax+kd",
    "balanced_softmax+text",
    "vlmkd",
    "balanced_softmax+kd@replay",
    "balanced_softmax+kd@live",
}
OOD_METHODS = {
    "vl_cls_plain",
    "vl_cls",
    "vl_cls+mse",
    "vl_cls+im_cst",
    "vl_cls+im_cst+vlprox",
    "vl_cls+im_cst+coop",
    "vl_cls+im_cst@replay",
}


def check_summary(out):
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"] == "fashion_mnist_lt_if100" and len(s["train_counts"]) == 10
    assert s["train_counts"] == sorted(s["train_counts"], reverse=True)  # exponential profile, head first
    assert "trained in-house" in s["note"] and "attribute" in s["note"]
    assert set(s["teacher"]["zero_shot"]) >= {"plain", "enriched"}
    assert set(s["methods"]) == LT_METHODS and set(s["ood"]) == OOD_METHODS
    for m in s["methods"].values():
        assert {
            "overall",
            "mean_per_class",
            "many",
            "medium",
            "few",
            "tail",
            "per_class",
            "std",
            "seeds",
        } <= set(m)
        assert 0.0 <= m["overall"] <= 1.0 and len(m["per_class"]) == 10
    for m in s["ood"].values():
        assert all(0.0 <= m[k] <= 1.0 for k in ("id", "ood_zero_shot", "ood_5shot"))
        gen = m["generalized"]  # among all ten names, raw and calibrated (vlmkd.eval.generalized)
        assert set(gen["calibrated"]) == {"base", "novel", "harmonic"} and gen["classes_scored_among"] == 10
    assert "never see a novel-class image" in s["note"] and "all ten classes" in s["note"]
    comb = s["combined"]
    assert len(comb) == 3 and "combined" in comb
    assert comb["combined"]["novel_zero_shot"] is not None and comb["combined"]["novel_5shot"] is not None
    lt_only = next(r for m, r in comb.items() if m.startswith("longtail-only"))
    assert lt_only["novel_zero_shot"] is None and 0.0 <= lt_only["overall"] <= 1.0
    report = (out / "report.md").read_text()
    assert "## Combined" in report and "| combined |" in report
    assert "## Generalized zero-shot" in report
    assert "vl_cls+im_cst+vlprox" in report and "balanced_softmax+text" in report
    assert "total" in s["timings"]
    return s


def write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype("uint8").tobytes())


def fmnist_subset(root, n_train=3000, n_test=1000):
    """The first images of the real Fashion-MNIST, rewritten as IDX files (the same format and loader)."""
    root.mkdir()
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            arr = _read_idx(_find_idx(FMNIST_DIR, f"{split}-{kind}"))[:n]
            write_idx(root / f"{split}-{kind}", arr)
    return root


@needs_fmnist
def test_demo_miniature_end_to_end(tmp_path, capsys):
    run_demo(tmp_path / "demo", settings=TINY, data_root=str(fmnist_subset(tmp_path / "fmnist")))
    s = check_summary(tmp_path / "demo")
    assert s["settings"]["pool_per_class"] == 60
    printed = capsys.readouterr().out
    assert "trained in-house" in printed and "| vlmkd |" in printed

    # Ship the OOD student as a zero-shot ONNX classifier over the novel classes it never saw, then predict from
    # the exported files and the bundled MiniLM alone.
    novel = s["ood_setup"]["novel_classes"]
    run = tmp_path / "demo" / "runs" / "ood-vl_cls+im_cst+vlprox-s0"
    export = tmp_path / "export"
    assert main([*zero_shot_export(run, export), "--classes", *novel]) == 0
    images = tmp_path / "novel_images"
    images.mkdir()
    test_x = _read_idx(_find_idx(tmp_path / "fmnist", "t10k-images-idx3-ubyte"))
    test_y = _read_idx(_find_idx(tmp_path / "fmnist", "t10k-labels-idx1-ubyte"))
    names = s["class_names"]
    picked = [i for i in range(len(test_y)) if names[test_y[i]] in novel][:10]
    for i in picked:
        Image.fromarray(test_x[i]).save(images / f"{i}.png")
    out = tmp_path / "pred.json"
    assert main(["predict", str(export), str(images), "--format", "json", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == len(picked) and all(r["error"] is None for r in rows)
    assert {r["label"] for r in rows} <= set(novel)

    # The CoOp student ships its learned class-text matrix, not a fresh embedding of the class texts
    coop_run = tmp_path / "demo" / "runs" / "ood-vl_cls+im_cst+coop-s0"
    coop_export = tmp_path / "export_coop"
    assert main([*zero_shot_export(coop_run, coop_export), "--classes", *novel]) == 0
    learned = load_student(coop_run)[1]["eval"]["class_text_learned"]
    row = {n: i for i, n in enumerate(learned["names"])}
    want = np.asarray(learned["matrix"], dtype=np.float32)[[row[n] for n in novel]]
    np.testing.assert_allclose(read_class_store(coop_export)[1], want, atol=1e-6)


def zero_shot_export(run, out) -> list[str]:
    """`vlmkd export` arguments for a zero-shot ONNX export of a demo run (class names still to add)."""
    return ["export", str(run), "--format", "onnx", "--head", "zero_shot", "--out", str(out), "--no-latency"]


@needs_fmnist
@pytest.mark.slow
def test_demo_quick_cli(tmp_path):
    out = tmp_path / "quick"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    s = check_summary(out)
    assert s["mode"] == "quick"
