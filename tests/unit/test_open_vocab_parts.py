"""Open-vocabulary pieces with one-line errors: novel classes by name, embed_dim against the text side, class
texts missing for a scored split, an unreachable hub."""

import numpy as np
import pytest

from vlmkd.config import load_config
from vlmkd.data.longtail import base_novel_split
from vlmkd.errors import ArtifactError, BackendError, ConfigError

NAMES = ["T-shirt", "ankle_boot", "sandal", "bag"]


def split_of(novel: str):
    return load_config(None, [f"data.split.novel_classes={novel}"]).data.split


def test_novel_classes_by_name_or_id():
    assert base_novel_split(4, split_of("[sandal, Ankle boot]"), NAMES) == ([0, 3], [1, 2])
    assert base_novel_split(4, split_of("[2, bag]"), NAMES) == ([0, 1], [2, 3])
    with pytest.raises(ConfigError, match="no class named 'sandl' \\(did you mean \"sandal\"\\?\\)"):
        base_novel_split(4, split_of("[sandl]"), NAMES)
    with pytest.raises(ConfigError, match="classes: T-shirt, ankle_boot"):
        base_novel_split(4, split_of("[giraffe]"), NAMES)


def test_embed_dim_is_checked_against_the_text_side():
    from vlmkd.tasks.build import _same_dim

    assert _same_dim(0, 384, "the class-text embeddings") == 384
    assert _same_dim(384, 384, "x") == 384
    with pytest.raises(ConfigError, match="model.embed_dim=768 but the class-text embeddings are 384-d"):
        _same_dim(768, 384, "the class-text embeddings")


def test_scoring_a_split_without_its_class_texts_names_the_cause():
    """Without class texts for the novel classes, ood_test used to be scored among the base texts and fail with
    "predictions must be class ids in [0, 3); got range [4, 6]"."""
    from vlmkd.data.manifest import Manifest
    from vlmkd.eval.evaluate import split_logits
    from vlmkd.tasks.build import EvalSpec

    def manifest(names):
        return Manifest(ids=["a"], labels=[0], class_names=names, paths=["a.png"])

    ms = {"train": manifest(["cat", "dog"]), "ood_test": manifest(["owl"]), "id": manifest(["cat", "dog"])}
    spec = EvalSpec("cosine", 0.07, {"train": np.eye(2, 4, dtype=np.float32)})
    out = {"embedding": np.ones((1, 4), np.float32)}
    assert split_logits(out, "id", spec, ms).shape == (1, 2)  # same classes as train: its texts apply
    with pytest.raises(
        ArtifactError, match="ood_test split's classes \\(owl\\) have no class texts.*classtext"
    ):
        split_logits(out, "ood_test", spec, ms)


def test_unreachable_hub_fails_fast_with_the_offline_route(monkeypatch):
    from vlmkd.utils import offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(offline, "unreachable", lambda host, port, timeout=3.0: "connection refused")
    with pytest.raises(
        BackendError, match="cannot be reached \\(connection refused\\).*HF_HUB_OFFLINE=1"
    ) as e:
        offline.check_hub("the open_clip weights 'ViT-L-14/openai'")
    assert "teacher train" in str(e.value) and "clip.name=domain:DIR" in str(e.value)
    from vlmkd.teachers.clip import load_clip_teacher

    pytest.importorskip("open_clip")
    with pytest.raises(BackendError, match="must come from huggingface.co"):
        load_clip_teacher("open_clip:ViT-B-32/openai")  # refused before open_clip's own download retries
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline.check_hub("anything")  # offline: cached weights may load, nothing to check
