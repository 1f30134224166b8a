"""CLIP-style teachers through `load_clip_teacher`: tiny random-weight open_clip and Hugging Face CLIP, offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_tiny_models import make_tiny_hf_clip, make_tiny_open_clip
from vlmkd.errors import BackendError, ConfigError
from vlmkd.teachers import build_clip_teacher
from vlmkd.teachers.base import VisionLanguageTeacher, encode_pil
from vlmkd.teachers.clip import list_clip_teachers, load_clip_teacher
from vlmkd.teachers.features import class_text_features, zero_shot_accuracy


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> str:
    return make_tiny_hf_clip(tmp_path_factory.mktemp("hf") / "tiny_clip")


@pytest.fixture(scope="module")
def open_clip_ckpt(tmp_path_factory) -> tuple[str, str]:
    """(arch, checkpoint path) of a tiny open_clip ViT registered from a JSON model config."""
    pytest.importorskip("open_clip")
    return make_tiny_open_clip(tmp_path_factory.mktemp("oc"))


def images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20 + 4 * i, 24, 3), dtype=np.uint8)) for i in range(n)]


def assert_frozen_teacher(t, name: str, dim: int = 16) -> None:
    assert isinstance(t, VisionLanguageTeacher)
    assert name in t.teacher_id and t.embed_dim == dim
    assert not t.model.training and not any(p.requires_grad for p in t.model.parameters())
    pre = t.preprocess_config()
    assert pre["image_size"] == 32 and len(pre["mean"]) == 3 and pre["interpolation"] == "bicubic"
    x = torch.stack([t.preprocess(im) for im in images()])
    assert x.shape == (3, 3, 32, 32)
    assert t.encode_image(x).shape == (3, dim) and t.encode_text(["a cat", "a photo of a dog"]).shape == (
        2,
        dim,
    )


def test_open_clip_local_checkpoint(open_clip_ckpt):
    import open_clip

    arch, ckpt = open_clip_ckpt
    name = f"open_clip:{arch}/{ckpt}"
    t = load_clip_teacher(name)
    assert_frozen_teacher(t, name)
    ref, _, pre = open_clip.create_model_and_transforms(arch, pretrained=ckpt)
    x = torch.stack([pre(im) for im in images()])
    with torch.no_grad():
        assert torch.allclose(t.encode_image(x), ref.eval().encode_image(x), atol=1e-5)
        tok = open_clip.get_tokenizer(arch)(["a cat"])
        assert torch.allclose(t.encode_text(["a cat"]), ref.encode_text(tok), atol=1e-5)
    assert t.preprocess_config()["crop"] == "center"
    random = load_clip_teacher(f"open_clip:{arch}")  # no PRETRAINED: random weights, a different id
    assert random.teacher_id == f"open_clip:{arch}/random" and random.teacher_id != t.teacher_id


def test_hf_clip_matches_model(hf_dir):
    from transformers import CLIPModel, CLIPProcessor

    name = f"hf:{hf_dir}"
    t = load_clip_teacher(name, revision="main")
    assert_frozen_teacher(t, name)
    assert "@main" in t.teacher_id and t.preprocess_config()["processor"]["class"] == "CLIPImageProcessor"
    ref, proc = CLIPModel.from_pretrained(hf_dir).eval(), CLIPProcessor.from_pretrained(hf_dir)
    x = proc.image_processor(images=images(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=x)
        want = out if isinstance(out, torch.Tensor) else out.pooler_output
        assert torch.allclose(encode_pil(t, images()), want, atol=1e-5)


def test_fingerprint_tracks_local_weights(tmp_path, hf_dir):
    a = load_clip_teacher(f"hf:{hf_dir}")
    other = make_tiny_hf_clip(tmp_path / "same_path", seed=1)
    b = load_clip_teacher(f"hf:{other}")
    make_tiny_hf_clip(tmp_path / "same_path", seed=2)  # retrained in place: same name, new weights
    c = load_clip_teacher(f"hf:{other}")
    assert len({a.teacher_id, b.teacher_id, c.teacher_id}) == 3


def test_zero_shot_helpers(hf_dir):
    t = build_clip_teacher(type("Cfg", (), {"name": f"hf:{hf_dir}", "revision": None})())
    W = class_text_features(t, [["a cat", "a photo of a cat"], ["a dog"]])
    assert W.shape == (2, 16) and torch.allclose(W.norm(dim=1), torch.ones(2), atol=1e-5)
    feats = np.stack([W[1].numpy() * 3, W[0].numpy(), W[1].numpy()])  # scale does not matter
    m = zero_shot_accuracy(feats, W, [1, 0, 0])
    assert m["overall"] == pytest.approx(2 / 3) and m["mean_per_class"] == pytest.approx(0.75)
    m3 = zero_shot_accuracy(np.stack([feats, feats], axis=1), W.numpy(), [1, 0, 1])  # N x K x D
    assert m3["overall"] == pytest.approx(1.0)


def test_errors():
    assert list_clip_teachers() == ["domain", "hf", "open_clip"]
    with pytest.raises(ConfigError, match="domain:, hf:, open_clip:"):
        load_clip_teacher("clip:ViT-B-32")
    with pytest.raises(ConfigError, match="PREFIX:SPEC"):
        load_clip_teacher("ViT-B-32")
    with pytest.raises(BackendError, match="cannot load"):
        load_clip_teacher("hf:/nonexistent/clip")


def test_missing_open_clip_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(ConfigError, match=r'pip install "vlmkd\[clip\]"'):
        load_clip_teacher("open_clip:ViT-B-32/openai")


def test_domain_prefix_delegates_and_grayscale_views(tmp_path, hf_dir):
    """domain:DIR loads the in-house teacher; its 1-channel preprocessing drives the augmented views too."""
    from conftest import make_image_folder
    from vlmkd.config import ClipTeacherConfig, DataConfig
    from vlmkd.data import build_manifests
    from vlmkd.teachers.domain import DomainTeacher, _tower
    from vlmkd.teachers.features import teacher_features
    from vlmkd.text.encoders import build_text_encoder

    data = DataConfig(
        format="image_folder", root=str(make_image_folder(tmp_path / "d")), image_size=16, in_chans=1
    )
    enc = build_text_encoder("hf_clip", model=hf_dir)
    spec = {
        "backbone": "cnn_tiny",
        "embed_dim": 16,
        "key": "k" * 64,
        "text_encoder": {"name": "hf_clip", "model": hf_dir},
    }
    DomainTeacher(_tower("cnn_tiny", 1, 16), enc, data, 2.0, spec).requires_grad_(False).save(tmp_path / "dt")
    t = load_clip_teacher(f"domain:{tmp_path / 'dt'}")
    assert t.teacher_id == "domain:" + "k" * 16 and t.embed_dim == 16 and not t.training
    m = build_manifests(data)["train"]
    clip = ClipTeacherConfig(view="augmented_k", num_views=2, cache_dir=str(tmp_path / "cache"))
    assert teacher_features(t, m, clip).shape == (len(m), 2, 16)
    assert class_text_features(t, [["a cat"], ["a dog"]]).shape == (2, 16)
