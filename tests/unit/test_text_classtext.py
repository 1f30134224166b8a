"""Class texts: templates, the enriched form, label2text/chatgpt import, JSON sentences, LLM sentences (HTTP)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers_chat_server import ChatServer
from vlmkd.config import ClassTextConfig
from vlmkd.errors import ConfigError, DataError
from vlmkd.text import (
    EmbeddingStore,
    build_class_texts,
    class_embedding_matrix,
    class_texts,
    load_class_texts,
)
from vlmkd.text.classtext import read_label2text


class HashEncoder:
    encoder_id = "hash:v1"
    dim = 8

    def encode(self, texts):
        out = np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_templates_and_enriched():
    cfg = ClassTextConfig(templates=["a photo of a {name}.", "a {name}"])
    assert class_texts(["golden_retriever"], cfg) == [
        ["a photo of a golden retriever.", "a golden retriever"]
    ]
    cfg = ClassTextConfig(enriched=True)
    got = class_texts(["sea_lion"], cfg, [["It is sleek.", "It has flippers."]])
    assert got == [["a photo of sea lion . It is sleek.", "a photo of sea lion . It has flippers."]]
    with pytest.raises(ConfigError, match="sentences"):
        class_texts(["a"], cfg)


def test_label2text_chatgpt_pair(tmp_path):
    (tmp_path / "label2text.txt").write_text("n01440764 tench\nn01443537 goldfish fish\n")
    (tmp_path / "chatgpt.txt").write_text("A tench is a green fish.\nA goldfish is small and orange.\n")
    pairs = read_label2text(tmp_path / "label2text.txt", tmp_path / "chatgpt.txt")
    assert pairs["n01443537"] == ("goldfish fish", "A goldfish is small and orange.")
    cfg = ClassTextConfig(
        enriched=True,
        sentences_file=str(tmp_path / "chatgpt.txt"),
        label2text_file=str(tmp_path / "label2text.txt"),
        output=str(tmp_path / "ct"),
    )
    folder = build_class_texts(["n01443537", "tench"], cfg)  # by folder id or by name
    data = load_class_texts(tmp_path / "ct")
    assert data["texts"] == [
        ["a photo of n01443537 . A goldfish is small and orange."],
        ["a photo of tench . A tench is a green fish."],
    ]
    assert folder.name == data["key"][:16]
    # the released three-column form: folder, running id, natural name with underscores
    (tmp_path / "l2t3.txt").write_text(
        "001.Black_footed_Albatross 1 Black_footed_Albatross\nn02119789 2 kit_fox\n"
    )
    pairs = read_label2text(tmp_path / "l2t3.txt", tmp_path / "chatgpt.txt")
    assert pairs["001.Black_footed_Albatross"][0] == "Black_footed_Albatross"
    assert pairs["n02119789"] == ("kit_fox", "A goldfish is small and orange.")
    (tmp_path / "chatgpt.txt").write_text("only one line\n")
    with pytest.raises(DataError, match="aligned"):
        read_label2text(tmp_path / "label2text.txt", tmp_path / "chatgpt.txt")


def test_json_sentences_and_embeddings(tmp_path):
    (tmp_path / "s.json").write_text(
        json.dumps({"_about": "x", "Ankle boot": ["A boot.", "It is tall."], "Bag": "A bag has handles."})
    )
    cfg = ClassTextConfig(enriched=True, sentences_file=str(tmp_path / "s.json"), output=str(tmp_path / "ct"))
    folder = build_class_texts(["ankle_boot", "Bag"], cfg, encoder=HashEncoder())
    st = EmbeddingStore(tmp_path / "ct")  # resolves LATEST -> classtext folder -> embeddings/LATEST
    assert st.ids == ["0#0", "0#1", "1#0"] and st.meta["source_key"] == load_class_texts(folder)["key"]
    W = class_embedding_matrix(st, 2)
    assert W.shape == (2, 8) and np.allclose(np.linalg.norm(W, axis=1), 1, atol=1e-5)
    with pytest.raises(DataError, match="no sentence"):
        build_class_texts(["shirt"], cfg)


def test_llm_sentences_over_http(tmp_path):
    with ChatServer() as srv:
        cfg = ClassTextConfig(
            enriched=True,
            sentences_backend="openai",
            llm_model="m",
            llm_base_url=srv.url,
            n_sentences=2,
            output=str(tmp_path / "ct"),
        )
        folder = build_class_texts(["cat", "dog"], cfg)
        assert srv.count() == 4
        build_class_texts(["cat", "dog"], cfg)  # cached by key: no new LLM calls
        assert srv.count() == 4
    data = load_class_texts(folder)
    assert len(data["texts"]) == 2 and all(len(t) == 2 for t in data["texts"])
    assert data["texts"][0][0].startswith("a photo of cat . a description of")


def test_class_template_ablation_replaces_descriptions(image_folder):
    """text.source=class_templates: every image's text embedding is its class's "a photo of a {c}." embedding."""
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.tasks.sources import load_image_text
    from vlmkd.text.encoders import build_text_encoder

    cfg = load_config(
        None,
        [
            f"data.root={image_folder}",
            "data.format=image_folder",
            "text.source=class_templates",
            "embed.device=cpu",
        ],
    )
    train = build_manifests(cfg.data)["train"]
    emb = load_image_text(cfg, train).astype(np.float32)
    assert emb.shape == (len(train), 384)
    ref = build_text_encoder("sentence_transformers", device="cpu").encode(
        [f"a photo of a {c}." for c in train.class_names]
    )
    np.testing.assert_allclose(emb, ref[train.labels], atol=2e-3)  # float16 storage
