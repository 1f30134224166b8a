"""Export building blocks without a full export: class store, preprocessing equality, image collection, output."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkd.config import DataConfig
from vlmkd.data.transforms import build_transform as train_build_transform
from vlmkd.data.transforms import preprocess_config
from vlmkd.errors import ConfigError, DataError
from vlmkd.export import preprocess_record
from vlmkd.export.card import model_card
from vlmkd.export.classes import add_classes, read_class_store, remove_classes, write_class_store
from vlmkd.export.encode import embed_classes
from vlmkd.predict import build_transform, collect_images, format_records, read_image


class HashEncoder:
    """A deterministic fake text encoder: one fixed random unit vector per text."""

    def __init__(self, encoder_id="fake/hash", dim=8):
        self.encoder_id, self.dim = encoder_id, dim

    def encode(self, texts):
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim) for t in texts]
        e = np.stack(rows).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def _store(tmp_path, enc):
    names = ["cat", "dog"]
    texts = [f"a photo of a {n}." for n in names]
    write_class_store(
        tmp_path,
        names,
        texts,
        embed_classes(enc, texts),
        {"name": "fake", "model": None, "id": enc.encoder_id, "dim": enc.dim},
        ["a photo of a {name}."],
        0.05,
    )
    return tmp_path


def test_class_store_add_remove(tmp_path):
    enc = HashEncoder()
    d = _store(tmp_path, enc)
    assert add_classes(d, ["owl", "fox"], encoder=enc) == ["cat", "dog", "owl", "fox"]
    info, arr = read_class_store(d)
    assert arr.shape == (4, 8) and info["temperature"] == 0.05
    np.testing.assert_allclose(arr[2], enc.encode(["a photo of a owl."])[0], atol=1e-6)
    with pytest.raises(ConfigError, match="already exist"):
        add_classes(d, ["owl"], encoder=enc)
    add_classes(d, ["owl"], texts=["a small owl"], encoder=enc, replace=True)
    np.testing.assert_allclose(read_class_store(d)[1][2], enc.encode(["a small owl"])[0], atol=1e-6)
    assert remove_classes(d, ["cat"]) == ["dog", "owl", "fox"]
    assert read_class_store(d)[1].shape == (3, 8)
    with pytest.raises(ConfigError, match="no class named"):
        remove_classes(d, ["zebra"])


def test_class_store_refuses_other_encoder(tmp_path):
    d = _store(tmp_path, HashEncoder())
    with pytest.raises(ConfigError, match="same encoder"):
        add_classes(d, ["owl"], encoder=HashEncoder("other/model"))


def test_embed_classes_averages_several_texts():
    enc = HashEncoder()
    e = embed_classes(enc, [["a", "b"], "c"])
    m = enc.encode(["a", "b"]).mean(0)
    np.testing.assert_allclose(e[0], m / np.linalg.norm(m), atol=1e-6)
    assert np.allclose(np.linalg.norm(e, axis=1), 1)


@pytest.mark.parametrize(
    "in_chans,size,mode,resize_mode",
    [
        (1, 28, "RGB", "shorter"),
        (3, 32, "L", "shorter"),
        (3, 96, "RGBA", "shorter"),
        (1, 96, "P", "shorter"),
        (3, 96, "RGB", "squash"),
        (1, 28, "RGB", "squash"),
    ],
)
def test_predict_preprocessing_equals_eval_transform(in_chans, size, mode, resize_mode):
    cfg = DataConfig(format="image_folder", image_size=size, in_chans=in_chans, resize_mode=resize_mode)
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (77, 61, 3), dtype=np.uint8)).convert(mode)
    ref = train_build_transform(cfg, train=False)(
        im.convert("RGB") if mode not in ("RGB", "L") else im
    ).numpy()
    got = build_transform(json.loads(json.dumps(preprocess_config(cfg))))(im)
    assert got.shape == (in_chans, size, size)
    np.testing.assert_array_equal(got, ref)


def test_collect_images_folders_and_lists(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ("a/1.png", "a/b/2.jpg", "a/.hidden.png", "a/notes.txt"):
        (tmp_path / p).write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\na/1.png\n\nmissing.png\n")
    got = collect_images([tmp_path / "a", f"@{lst}"])
    assert [p.name for p in got] == ["1.png", "2.jpg", "notes.txt", "1.png", "missing.png"]
    with pytest.raises(DataError):
        collect_images([f"@{tmp_path / 'nope.txt'}"])


def test_read_image_reasons(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "x.txt").write_text("hello")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    full = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(full[: len(full) // 2])
    assert read_image(tmp_path / "ok.png").size == (8, 8)
    for name, msg in (
        ("bad.png", "corrupt"),
        ("x.txt", "not an image"),
        ("trunc.png", "corrupt"),
        ("gone.png", "does not exist"),
    ):
        with pytest.raises(DataError, match=msg):
            read_image(tmp_path / name)


def test_format_records_all_formats():
    recs = [
        {
            "path": "a.png",
            "label": "cat",
            "score": 0.9,
            "top_k": [{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.1}],
            "error": None,
        },
        {"path": "b.txt", "label": None, "score": None, "top_k": [], "error": "not an image file"},
    ]
    assert json.loads(format_records(recs, "json")) == recs
    csv_text = format_records(recs, "csv").splitlines()
    assert csv_text[0] == "path,label,score,top_k,error"
    assert csv_text[1].startswith("a.png,cat,0.900000,cat:0.900000;dog:0.100000")
    assert csv_text[2].endswith("not an image file")
    table = format_records(recs, "table")
    assert "ERROR" in table and "dog 0.100" in table


def test_model_card_says_not_measured():
    card = model_card(
        name="r",
        export={"format": "onnx", "model_file": "model.onnx", "head": "classifier", "outputs": ["logits"]},
        meta={"spec": {"name": "cnn_tiny"}, "preprocess": {}},
        summary={},
        config={},
        params=10,
        flops=None,
        latency=None,
        class_names=["a"],
    )
    assert card.count("not measured") >= 3
    summary = {
        "dataset": "fashion_mnist",
        "losses": {"cls": {"name": "ce", "weight": 1}},
        "splits": {
            "test": {"overall": 0.5, "many": 0.7, "medium": 0.4, "few": 0.1, "mean_per_class": 0.45},
            "ood_test": {"overall": 0.3},
        },
    }
    config = {
        "teacher": {"name": "resnet50"},
        "clip": {"name": "domain:teacher"},
        "text": {"embeddings": "e"},
        "describe": {"backend": "interrogate"},
    }
    card = model_card(
        name="r",
        export={"format": "onnx", "model_file": "model.onnx", "head": "classifier", "outputs": ["logits"]},
        meta={"spec": {"name": "cnn_tiny"}, "preprocess": {}, "train_counts": [10, 1]},
        summary=summary,
        config=config,
        params=10,
        flops=2e6,
        latency={"batch1_ms": 1.0},
        class_names=["a", "b"],
    )
    for s in (
        "fashion_mnist",
        "resnet50",
        "domain:teacher",
        "interrogate",
        "`cls`: ce",
        "70.00%",
        "10.00%",
        "Novel-class zero-shot accuracy: 30.00%",
        "2.00 MFLOP",
        "batch1 1.00 ms",
        "imbalance 10.0",
    ):
        assert s in card, s


def test_squash_resize_keeps_the_whole_image():
    """data.resize_mode=squash (the OOD paper): R x R first, aspect ratio lost, then the center crop."""
    from torchvision import transforms as T

    cfg = DataConfig(format="image_folder", image_size=96, in_chans=3, resize_mode="squash")
    im = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 150, 3), dtype=np.uint8))
    got = train_build_transform(cfg, train=False)(im)
    r = round(96 / 0.875)
    ref = T.Compose([T.Resize((r, r)), T.CenterCrop(96), T.ToTensor()])(im)
    mean, std = preprocess_config(cfg)["mean"], preprocess_config(cfg)["std"]
    np.testing.assert_allclose(got.numpy(), T.Normalize(mean, std)(ref).numpy(), atol=1e-6)
    shorter = train_build_transform(dataclasses.replace(cfg, resize_mode="shorter"), train=False)(im)
    assert not torch.allclose(got, shorter)
    assert train_build_transform(cfg, train=True)(im).shape == (3, 96, 96)
    assert "aspect ratio not kept" in " ".join(
        preprocess_record({"preprocess": preprocess_config(cfg)})["steps"]
    )
    with pytest.raises(ConfigError, match="resize_mode 'stretch'; choose shorter or squash"):
        train_build_transform(dataclasses.replace(cfg, resize_mode="stretch"), train=False)


def test_predictor_applies_gamma_to_seen_classes_only():
    from vlmkd.eval.generalized import SeenCalibration
    from vlmkd.predict import Predictor

    text = np.eye(3, dtype=np.float32)
    runtime = lambda x: {"embedding": x}  # noqa: E731 - the "model" returns its input as the embedding
    emb = np.array([[0.8, 0.1, 0.7], [0.1, 0.2, 0.9]], np.float32)
    raw = Predictor(runtime, {}, ["a", "b", "new"], "cosine", text, 0.1)
    assert raw.logits(emb).argmax(1).tolist() == [0, 2]
    seen = np.array([1, 1, 0], bool)
    cal = Predictor(
        runtime, {}, ["a", "b", "new"], "cosine", text, 0.1, seen=seen, calibration=SeenCalibration(0.2)
    )
    assert cal.logits(emb).argmax(1).tolist() == [2, 2]
    np.testing.assert_allclose(cal.logits(emb)[:, 2], raw.logits(emb)[:, 2])


def test_class_texts_come_from_the_run_library_first(tmp_path):
    """Names the run knows keep its exact rows and texts; others get its templates; gamma and seen flags survive
    `classes add` / `remove`, and added classes are unseen."""
    from vlmkd.export.texts import TextLibrary, resolve_classes

    enc = HashEncoder()
    row = enc.encode(["stored row"])[0]
    lib = TextLibrary(
        texts={"sea_lion": ["a photo of sea lion . It is sleek."]},
        rows={"sea_lion": row},
        templates=["a photo of a {name}.", "a {name}"],
    )
    texts, rows, _ = resolve_classes(["sea_lion", "red_panda"], lib, enc)
    assert texts == [["a photo of sea lion . It is sleek."], ["a photo of a red panda.", "a red panda"]]
    np.testing.assert_allclose(rows[0], row / np.linalg.norm(row), atol=1e-6)
    np.testing.assert_allclose(rows[1], embed_classes(enc, [texts[1]])[0], atol=1e-6)

    d = _store(tmp_path, enc)
    info = json.loads((d / "classes.json").read_text())
    info.update(gamma=0.1, seen=[True, True], text_library={"texts": {"owl": ["an owl at night."]}})
    (d / "classes.json").write_text(json.dumps(info))
    add_classes(d, ["owl", "fox"], encoder=enc)
    info, arr = read_class_store(d)
    assert info["texts"][2:] == [["an owl at night."], ["a photo of a fox."]]
    np.testing.assert_allclose(arr[2], enc.encode(["an owl at night."])[0], atol=1e-6)
    assert info["gamma"] == 0.1 and info["seen"] == [True, True, False, False]
    remove_classes(d, ["dog"])
    assert read_class_store(d)[0]["seen"] == [True, False, False]


def test_classes_add_replace_says_replaced(tmp_path, capsys):
    from vlmkd.cli import main

    d = _store(tmp_path, HashEncoder())
    info = json.loads((d / "classes.json").read_text())
    info["encoder"] = None  # so that the CLI's default encoder is not checked against the fake one
    (d / "classes.json").write_text(json.dumps(info))
    from unittest import mock

    with mock.patch("vlmkd.export.classes.build_encoder", return_value=HashEncoder()):
        assert main(["classes", "add", str(d), "cat", "--text", "a black cat", "--replace"]) == 0
    out = capsys.readouterr().out
    assert "replaced cat" in out and "added" not in out
