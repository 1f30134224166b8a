"""CoOp prompt learning: word init reproduces the frozen encoder exactly; training moves only the context vectors.

Three real text towers: the bundled MiniLM (the domain teacher's), a tiny open_clip and a tiny Hugging Face CLIP.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers_tiny_models import make_tiny_hf_clip, make_tiny_open_clip
from vlmkd.errors import ConfigError
from vlmkd.losses import LOSSES
from vlmkd.tasks.distill import DistillTask, LossSpec
from vlmkd.text.coop import LearnedClassText, PromptLearner, frozen_tower, learned_rows
from vlmkd.text.encoders import build_text_encoder

NAMES = ["coat", "sandal", "bag"]


@pytest.fixture(scope="module", params=["minilm", "open_clip", "hf_clip"])
def encoder(request, tmp_path_factory):
    if request.param == "minilm":
        return build_text_encoder("sentence_transformers")
    if request.param == "open_clip":
        pytest.importorskip("open_clip")
        arch, ckpt = make_tiny_open_clip(tmp_path_factory.mktemp("oc"))
        return build_text_encoder("open_clip", f"{arch}/{ckpt}")
    return build_text_encoder("hf_clip", make_tiny_hf_clip(tmp_path_factory.mktemp("hf") / "clip"))


def learner_for(encoder, **kw) -> PromptLearner:
    return PromptLearner(frozen_tower(encoder), {n: [f"{n}."] for n in NAMES}, **kw)


def test_word_init_equals_the_frozen_encoder(encoder):
    learner = learner_for(encoder, init="a photo of a")
    got = learner(NAMES).detach().numpy()
    want = encoder.encode([f"a photo of a {n}." for n in NAMES])
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert learner.ctx.shape == (1, 4, learner.tower.width)  # "a photo of a": 4 tokens in every tokenizer


def test_gradient_reaches_only_the_context(encoder):
    learner = learner_for(encoder, init=None, n_ctx=3, class_specific=True)
    tower = learner.tower.embedding  # the tower is no submodule: only ctx is a parameter
    assert [n for n, _ in learner.named_parameters()] == ["ctx"] and learner.ctx.shape[:2] == (3, 3)
    model_params = [p for p in _tower_modules(encoder).parameters()]
    before = [p.detach().clone() for p in model_params]
    ctx0 = learner.ctx.detach().clone()
    opt = torch.optim.SGD(learner.parameters(), lr=1.0)
    target = torch.eye(3)
    for _ in range(3):
        opt.zero_grad()
        emb = learner(NAMES)
        loss = torch.nn.functional.cross_entropy(emb @ emb.T / 0.1, target)  # pull the class texts apart
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in model_params) and tower.weight.grad is None
    assert all(torch.equal(a, b) for a, b in zip(before, model_params))
    assert not torch.allclose(learner.ctx, ctx0)


def _tower_modules(encoder) -> torch.nn.Module:
    return encoder.model


def test_class_specific_context_and_unknown_classes(encoder):
    learner = PromptLearner(
        frozen_tower(encoder), {n: [f"{n}."] for n in NAMES}, class_specific=True, train_classes=NAMES[:2]
    )
    with torch.no_grad():
        # only the first class's prompt changes (not a constant shift: BERT's LayerNorm would remove it)
        learner.ctx[0] += torch.randn(learner.ctx[0].shape, generator=torch.Generator().manual_seed(0))
    ctx = learner.context_for(NAMES)
    assert torch.equal(ctx[2], learner.ctx.mean(0))  # a class without its own context: the mean context
    plain = encoder.encode([f"a photo of a {n}." for n in NAMES])
    got = learner(NAMES).detach().numpy()
    assert not np.allclose(got[0], plain[0], atol=1e-3)
    np.testing.assert_allclose(got[1], plain[1], atol=2e-5)
    with pytest.raises(ConfigError, match="no class text"):
        learner(["dress"])


def test_task_uses_the_learned_class_text_and_eval_sees_it():
    encoder = build_text_encoder("sentence_transformers")
    learner = learner_for(encoder, init="a photo of a")
    student = torch.nn.Linear(8, encoder.dim)
    student_fn = _DictOut(student)
    terms = [LossSpec("cls", 1.0, LOSSES.build("vl_cls", temperature=0.07))]
    task = DistillTask(student_fn, terms, prompt_learner=learner)
    assert any(
        p is learner.ctx for p in task.state.parameters()
    )  # one trainable state: DDP and checkpoint see it
    assert "prompt_learner.ctx" in task.state.state_dict()
    view = LearnedClassText(learner, {"train": NAMES, "ood_test": NAMES[1:]})
    before = view["train"]
    batch = {"image": torch.randn(6, 8), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    task(batch)["loss"].backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    with torch.no_grad():
        learner.ctx -= 10 * learner.ctx.grad
    after = view["train"]
    assert set(view) == {"train", "ood_test"} and view["ood_test"].shape == (2, encoder.dim)
    assert not np.allclose(before, after, atol=1e-4)
    exported = view.to_json()
    np.testing.assert_allclose(learned_rows(exported, ["bag", "coat"]), after[[2, 0]], atol=1e-5)
    with pytest.raises(ConfigError, match="learned class texts"):
        learned_rows(exported, ["dress"])


class _DictOut(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return {"embedding": self.m(x)}


def test_coop_config_and_its_errors():
    from types import SimpleNamespace

    from vlmkd.config import load_config
    from vlmkd.tasks.build import _prompt_texts, build_task

    cfg = load_config(None, ["text.coop.enabled=true", "text.coop.class_specific=true", "text.coop.n_ctx=8"])
    assert cfg.text.coop.enabled and cfg.text.coop.class_specific and cfg.text.coop.init == "a photo of a"
    train = SimpleNamespace(class_counts=lambda: np.array([3, 2]))
    with pytest.raises(ConfigError, match="vl_cls"):  # the default `cls: ce` reads no class texts
        build_task(cfg, {"train": train}, torch.device("cpu"))
    bad = load_config(None, ["text.coop.texts=sentences", "text.class_embeddings=/nonexistent"])
    with pytest.raises(ConfigError, match="names or class_texts"):
        _prompt_texts(bad)
