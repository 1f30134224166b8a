"""Tiny random-weight BLIP and LLaVA models described through the real `vlmkd describe` command."""

from __future__ import annotations

import pytest

from conftest import make_image_folder
from helpers_tiny_models import make_tiny_blip, make_tiny_llava
from vlmkd.cli import main
from vlmkd.config import DescribeConfig
from vlmkd.describe import DescriptionStore
from vlmkd.describe.hf import TransformersDescriber
from vlmkd.describe.store import read_rows


def _yaml(tmp_path, model, **describe):
    root = make_image_folder(tmp_path / "data", per_class=(8, 6, 4))
    d = {
        "backend": "transformers",
        "model": model,
        "batch_size": 16,
        "max_new_tokens": 6,
        "device": "cpu",
        "output": str(tmp_path / "desc"),
        "shard_size": 16,
        **describe,
    }
    body = ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {str(v).lower()}" for k, v in d.items())
    p = tmp_path / "c.yaml"
    p.write_text(f"data: {{format: image_folder, root: '{root}'}}\ndescribe: {{{body}}}\n")
    return p


@pytest.mark.parametrize(
    "maker,prompt", [(make_tiny_blip, "a photo of"), (make_tiny_llava, "Describe the {class_name}.")]
)
def test_describe_cli_tiny_vlm(tmp_path, maker, prompt, monkeypatch):
    model = maker(tmp_path / "model")
    calls = []
    orig = TransformersDescriber._generate_batch

    def spy(self, images, prompts, n, seeds):
        calls.append(len(images))
        return orig(self, images, prompts, n, seeds)

    monkeypatch.setattr(TransformersDescriber, "_generate_batch", spy)
    cfg = _yaml(tmp_path, model, prompt=prompt)
    assert main(["describe", str(cfg)]) == 0
    st = DescriptionStore(tmp_path / "desc")
    t = st.load(include_failed=True)
    assert len(t["sample_id"]) == 18 and len(set(t["sample_id"])) == 18
    assert max(calls) == 16  # batched: 16 images per generate() call
    rows = read_rows(st.path / "descriptions.parquet")
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= 16  # random weights may emit an empty answer now and then (recorded as failed)
    r = ok[0]
    assert r["model_id"] == model and r["created"] and '"max_new_tokens": 6' in r["decoding"]
    assert r["completion_tokens"] > 0 and r["prompt_tokens"] > 0
    if "{class_name}" in prompt:
        assert r["prompt"] == "Describe the cat." and st.meta["describer"]["chat_template"]
    assert (st.path / "config.yaml").is_file()
    assert main(["describe", str(cfg), "--dry-run", "--sample", "4"]) == 0


def test_sampling_n_descriptions_and_left_padding(tmp_path):
    model = make_tiny_llava(tmp_path / "model")
    cfg = DescribeConfig(
        backend="transformers",
        model=model,
        device="cpu",
        do_sample=True,
        n_descriptions=2,
        max_new_tokens=4,
        temperature=0.9,
    )
    d = TransformersDescriber(cfg)
    assert d.tokenizer.padding_side == "left"
    from PIL import Image

    ims = [Image.new("L", (20, 20), v) for v in (0, 128)]
    out = d.describe(ims, ["cat", "a_long_class_name_here"], 2)
    assert len(out) == 2 and all(len(r) == 2 for r in out)


def test_sampled_descriptions_do_not_depend_on_batching(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    cfg = DescribeConfig(
        backend="transformers", model=make_tiny_llava(tmp_path / "model"), device="cpu", do_sample=True,
        n_descriptions=2, max_new_tokens=5, temperature=1.5,
    )  # fmt: skip
    d = TransformersDescriber(cfg)
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(4)]
    names = ["cat", "dog", "a_long_class_name_here", "owl"]
    torch.manual_seed(1)
    together = d.describe(ims, names, 2)
    torch.manual_seed(2)  # the global RNG has no say either
    alone = [d.describe([im], [c], 2)[0] for im, c in zip(ims, names)]
    texts = [[x.text for x in r] for r in together]
    assert texts == [[x.text for x in r] for r in alone]
    assert any(r[0] != r[1] for r in texts) and len({r[0] for r in texts}) > 1  # really sampled


def test_local_describer_key_follows_its_weights_not_mtime(tmp_path):
    import os

    model = make_tiny_blip(tmp_path / "model")
    cfg = DescribeConfig(backend="transformers", model=model, device="cpu")
    first = TransformersDescriber(cfg).identity()
    assert first["weights"]
    for f in (tmp_path / "model").iterdir():
        os.utime(f, (1, 1))  # touched or copied: the same weights, the same key
    assert TransformersDescriber(cfg).identity() == first
    make_tiny_blip(tmp_path / "model", seed=1)  # retrained in place: a new key
    assert TransformersDescriber(cfg).identity()["weights"] != first["weights"]


def test_not_a_vlm_is_a_backend_error(tmp_path):
    from vlmkd.errors import BackendError

    with pytest.raises(BackendError):
        TransformersDescriber(DescribeConfig(backend="transformers", model=str(tmp_path / "nothing")))
