"""Text encoders (bundled MiniLM with real weights, HF CLIP tower, open_clip) and the embedding store."""

from __future__ import annotations

import numpy as np
import pytest

from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.text import EmbeddingStore, build_text_encoder, embed_texts, list_text_encoders
from vlmkd.text.store import dedup


class CountingEncoder:
    encoder_id = "count:v1"
    dim = 4

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        self.seen.extend(texts)
        rng = np.random.default_rng([len(t) for t in texts])
        return rng.normal(size=(len(texts), 4)).astype(np.float32)


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder("sentence_transformers", device="cpu")


def test_minilm_offline_paraphrases_closer(minilm):
    a, b, c = minilm.encode(
        [
            "A small dog is running on the grass.",
            "A little puppy runs across the lawn.",
            "The stock market fell sharply on Tuesday.",
        ]
    )
    assert minilm.dim == 384 and minilm.encoder_id.endswith("all-MiniLM-L6-v2")
    assert np.allclose(np.linalg.norm([a, b, c], axis=1), 1, atol=1e-4)
    assert a @ b > a @ c + 0.3 and a @ b > b @ c + 0.3


def test_store_dedup_float16_mmap_and_lookup(tmp_path):
    enc = CountingEncoder()
    texts = ["x", "yy", "x", "zzz", "yy", "x"]
    st = embed_texts(texts, enc, tmp_path / "emb", ids=[f"i{j}" for j in range(6)], batch_size=2)
    assert sorted(enc.seen) == ["x", "yy", "zzz"]  # each distinct text encoded once
    assert st.array.dtype == np.float16 and st.array.shape == (6, 4) and isinstance(st.array, np.memmap)
    assert np.allclose(np.linalg.norm(st.array.astype(np.float32), axis=1), 1, atol=2e-3)
    assert np.array_equal(st.lookup(["i0", "i2"])[0], st.lookup(["i5"])[0])
    assert st.meta["unique_texts"] == 3 and st.meta["encoder_calls_saved"] == 3
    with pytest.raises(ArtifactError):
        st.lookup(["nope"])
    again = embed_texts(texts, enc, tmp_path / "emb", ids=[f"i{j}" for j in range(6)])
    assert again.path == st.path and len(enc.seen) == 3  # same key: reused, not recomputed
    other = embed_texts(texts[:-1], enc, tmp_path / "emb")
    assert other.path != st.path and EmbeddingStore(tmp_path / "emb").path == other.path  # LATEST


def test_dedup_inverse():
    u, inv = dedup(["b", "a", "b"])
    assert u == ["b", "a"] and inv.tolist() == [0, 1, 0]


def test_registry_and_errors():
    assert {"sentence_transformers", "open_clip", "hf_clip"} <= set(list_text_encoders())
    with pytest.raises(ConfigError, match="did you mean"):
        build_text_encoder("sentence_transformer")
    with pytest.raises(ConfigError):
        build_text_encoder("open_clip", model=None)


def test_hf_clip_text_tower_tiny(tmp_path):
    from helpers_tiny_models import make_tiny_hf_clip

    make_tiny_hf_clip(tmp_path / "clip", text_layers=2)
    enc = build_text_encoder("hf_clip", model=str(tmp_path / "clip"))
    e = enc.encode(["a photo of a cat", "a dog", "a photo of a cat"])
    assert enc.dim == 16 and e.shape == (3, 16) and np.allclose(e[0], e[2], atol=1e-5)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_open_clip_text_tower_random_weights():
    pytest.importorskip("open_clip")
    enc = build_text_encoder("open_clip", model="RN50")
    e = enc.encode(["a photo of a cat", "a dog"])
    assert e.shape == (2, enc.dim) and enc.encoder_id == "open_clip:RN50/random"
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
