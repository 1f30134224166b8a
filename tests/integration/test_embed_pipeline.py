"""describe (openai, local server) -> embed (bundled MiniLM) -> embeddings in manifest order, through the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_image_folder
from helpers_chat_server import ChatServer
from vlmkd.cli import main
from vlmkd.config import load_config
from vlmkd.data import build_manifests
from vlmkd.describe import DescriptionStore
from vlmkd.errors import ArtifactError
from vlmkd.text import EmbeddingStore, class_embedding_matrix, embeddings_for_manifest


def test_describe_embed_classtext_cli(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(3, 2, 2))
    cfg = tmp_path / "c.yaml"
    with ChatServer(faults={}) as srv:
        cfg.write_text(
            f"data: {{format: image_folder, root: '{root}'}}\n"
            f"describe: {{backend: openai, model: m, base_url: '{srv.url}', n_descriptions: 2, do_sample: true, "
            f"output: '{tmp_path / 'desc'}'}}\n"
            f"embed: {{output: '{tmp_path / 'emb'}', device: cpu}}\n"
            f"classtext: {{output: '{tmp_path / 'ct'}', templates: ['a photo of a {{name}}.', 'a {{name}}']}}\n"
        )
        assert main(["describe", str(cfg)]) == 0
    assert main(["embed", str(cfg)]) == 0
    assert main(["classtext", str(cfg)]) == 0
    c = load_config(cfg)
    manifest = build_manifests(c.data)["train"]
    desc, emb = DescriptionStore(tmp_path / "desc"), EmbeddingStore(tmp_path / "emb")
    assert emb.dim == 384 and len(emb) == 14 and emb.meta["unique_texts"] == 7  # same image -> same answer
    X, mask = embeddings_for_manifest(desc, emb, manifest, n=2, return_mask=True)
    assert X.shape == (7, 2, 384) and X.dtype == np.float16 and mask.all()
    assert np.allclose(np.linalg.norm(X.astype(np.float32), axis=2), 1, atol=3e-3)
    W = class_embedding_matrix(EmbeddingStore(tmp_path / "ct"), 3)
    assert W.shape == (3, 384)
    with pytest.raises(ArtifactError, match="another manifest"):
        embeddings_for_manifest(desc, emb, manifest.subset([0, 1]), n=2)
