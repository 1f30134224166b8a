"""Class texts: templates, the enriched form, label2text/chatgpt import, JSON sentences, LLM sentences (HTTP)."""

from __future__ import annotations

import dataclasses
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
    from vlmkd.tasks.sources import image_text_rows
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
    rows = image_text_rows(cfg, train)
    emb = np.stack([rows.row(i) for i in range(len(train))])
    assert emb.shape == (len(train), 384)
    ref = build_text_encoder("sentence_transformers", device="cpu").encode(
        [f"a photo of a {c}." for c in train.class_names]
    )
    np.testing.assert_allclose(emb, ref[train.labels], atol=2e-3)  # float16 storage


def test_llm_unreachable_fails_fast_in_one_line(tmp_path):
    """A refused connection is reported at once (no 6 retries) and names the offline route."""
    import socket
    import time

    from vlmkd.errors import BackendError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ClassTextConfig(
        enriched=True,
        sentences_backend="openai",
        llm_model="m",
        llm_base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=5,
        output=str(tmp_path / "ct"),
    )
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="connection refused") as err:
        build_class_texts(["cat"], cfg)
    assert time.monotonic() - t0 < 3 and "\n" not in str(err.value)
    assert "sentences_file" in str(err.value) and "teacher train" in str(err.value)
    with pytest.raises(ConfigError, match="VLMKD_TEST_NO_SUCH_KEY .* is not set.*sentences_file"):
        build_class_texts(["cat"], dataclasses.replace(cfg, llm_api_key_env="VLMKD_TEST_NO_SUCH_KEY"))
    with pytest.raises(ConfigError, match="write the sentences yourself"):
        build_class_texts(
            ["cat"], ClassTextConfig(enriched=True, sentences_backend="openai", output=str(tmp_path))
        )


def test_sentences_file_error_names_the_folder_names(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"T-shirt": "a shirt."}))
    cfg = ClassTextConfig(enriched=True, sentences_file=str(p), output=str(tmp_path / "ct"))
    with pytest.raises(DataError, match="no sentence for class 'boot'.*folder names: boot, sandal"):
        build_class_texts(["boot", "sandal"], cfg)


def test_classtext_covers_every_class_with_a_novel_split(image_folder):
    """`vlmkd classtext` takes every class of the dataset, not only the base classes of the training split,
    whether the novel classes are pinned by name or by id, and whatever num_novel says."""
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.text.classtext import dataset_class_names

    base = [f"data.root={image_folder}", "data.format=image_folder"]
    for novel in ("[owl]", "[2]"):
        cfg = load_config(None, [*base, f"data.split.novel_classes={novel}", "data.split.num_novel=0"])
        ms = build_manifests(cfg.data)
        assert ms["train"].class_names == ["cat", "dog"] and ms["ood"].class_names == ["owl"]
        assert dataset_class_names(ms) == ["cat", "dog", "owl"]
    cfg = load_config(None, [*base, "data.split.novel_classes=[cat]"])
    assert dataset_class_names(build_manifests(cfg.data)) == ["cat", "dog", "owl"]
    assert dataset_class_names(build_manifests(load_config(None, base).data)) == ["cat", "dog", "owl"]
