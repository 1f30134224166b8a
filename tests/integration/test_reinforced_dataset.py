"""`vlmkd export-dataset`: a run trained from the exported reinforced dataset (no teacher, describer or text
encoder) equals the run trained from the caches it was exported from."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_image_folder
from helpers_tiny_models import make_tiny_hf_clip
from vlmkd.cli import main
from vlmkd.teachers.reinforced import CARD


def write(base: Path, text: bool) -> Path:
    data = make_image_folder(base / "d", per_class=(8, 6, 4), size=16)
    clip = make_tiny_hf_clip(base / "clip", dim=16)
    cfg = {
        "data": {"format": "image_folder", "root": str(data), "image_size": 16, "batch_size": 8},
        "clip": {
            "name": f"hf:{clip}",
            "view": "replay",
            "num_views": 3,
            "batch_size": 8,
            "cache_dir": str(base / "feats"),
        },
        "describe": {
            "backend": "interrogate",
            "n_descriptions": 2,
            "output": str(base / "desc"),
            "device": "cpu",
        },
        "embed": {"encoder": "hf_clip", "model": clip, "output": str(base / "emb"), "device": "cpu"},
        "text": {"descriptions": str(base / "desc"), "embeddings": str(base / "emb"), "multi": "sample"},
        "model": {"name": "cnn_tiny", "head": "both"},
        "losses": {
            "cls": {"name": "ce"},
            "text": {"name": "text_nce", "args": {"direction": "symmetric"}},
            "im": {"name": "im_cst"},
        },
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 3, "max_steps": 5, "device": "cpu", "tensorboard": False, "log_every": 1},
        "eval": {"every": 0},
    }
    if not text:
        for section in ("describe", "embed", "text"):
            del cfg[section]
        del cfg["losses"]["text"]
    path = base / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for stage in ("describe", "embed", "teach") if text else ("teach",):
        assert main([stage, str(path)]) == 0, stage
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("reinforced"), text=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("reinforced_plain"), text=False)


@pytest.mark.slow  # ~50 s: describe, embed, teach, two training runs and the export
def test_training_from_the_exported_dataset_equals_training_from_the_caches(config, capsys):
    base = config.parent
    assert main(["train", str(config), "--run-dir", str(base / "from_caches")]) == 0
    out = base / "reinforced"
    assert main(["export-dataset", str(config), str(out)]) == 0
    assert "reinforced dataset ->" in capsys.readouterr().out
    card = yaml.safe_load((out / CARD).read_text())
    assert card["num_views"] == 3 and card["fields"]["features"]["shape"] == [3, 16]
    assert card["fields"]["text_emb"]["shape"][0] == 2 and card["clip_teacher"]["name"].startswith("hf:")
    assert sorted(p.name for p in out.glob("train-*.tar")) == ["train-000000.tar"]
    # no teacher, describer or text encoder: their names are gone from the recipe
    no_models = ["clip.name=null", "text.descriptions=null", "text.embeddings=null", "embed.model=null"]
    wds = ["data.format=wds", f"data.root={out}", "data.val_fraction=0", *no_models]
    assert main(["train", str(config), "--run-dir", str(base / "from_dataset"), *wds]) == 0
    a = load_file(base / "from_caches" / "student.safetensors")
    b = load_file(base / "from_dataset" / "student.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    assert any(float(a[k].float().abs().sum()) > 0 for k in a)


def test_the_dataset_serves_the_cached_views_and_targets_with_no_teacher(plain, capsys):
    """The rows read back from the shards are the caches' rows, in manifest order, and no teacher is built."""
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.tasks.providers import BuildContext, replay_feature_rows

    out = plain.parent / "reinforced"
    assert main(["export-dataset", str(plain), str(out)]) == 0
    cfg = load_config(plain)
    cached = replay_feature_rows(BuildContext(cfg, build_manifests(cfg.data), torch.device("cpu")))
    wds = load_config(plain, ["data.format=wds", f"data.root={out}", "data.val_fraction=0", "clip.name=null"])
    ms = build_manifests(wds.data)
    stored = replay_feature_rows(BuildContext(wds, ms, torch.device("cpu")))
    assert len(stored) == len(cached) == len(ms["train"])
    for i in range(len(stored)):
        np.testing.assert_array_equal(np.asarray(stored.array[i]), np.asarray(cached.array[i]))
        np.testing.assert_array_equal(np.asarray(stored.params[i]), np.asarray(cached.params[i]))
        assert stored.view(i, 2)[0] == cached.view(i, 2)[0]


def test_export_needs_replayed_views(plain, tmp_path, capsys):
    assert main(["export-dataset", str(plain), str(tmp_path / "o"), "clip.view=clean"]) == 2
    assert "set clip.view=replay" in capsys.readouterr().err
