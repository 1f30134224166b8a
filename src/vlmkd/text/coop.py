"""CoOp prompt learning (Zhou et al., IJCV 2022): learnable context vectors in front of each class text, run through
a frozen text tower at every step, so the class-text matrix itself is learned.

One mechanism for every tower: a forward hook on the tower's token-embedding layer overwrites the embeddings of the
`n_ctx` tokens after the start token with the context vectors, then the tower's own, unmodified forward runs
(open_clip `encode_text`, Hugging Face CLIP `get_text_features`, sentence-transformers MiniLM with its mean pooling).
The tower is frozen and kept outside the module tree (not in state_dict, optimizer or DDP): the gradient reaches
only the context vectors. Initialised from the words of `init` ("a photo of a"), the prompts are exactly those
words, so before training the learned matrix equals the frozen encoder's embedding of "a photo of a {text}".

Context is shared by all classes (it then names unseen classes too) or class-specific (`class_specific=True`;
classes without their own context, e.g. novel ones, use the mean context).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.errors import ConfigError
from vlmkd.text.encoders import build_text_encoder

PLACEHOLDER = "x"  # one token in CLIP's BPE and in BERT's WordPiece


class FrozenTower:
    """A text encoder's trainable-free view: tokenize, its token-embedding layer, and encode(tokens) -> B x D."""

    def __init__(self, embedding: nn.Embedding, tokenize, encode, modules: list[nn.Module], name: str):
        self.embedding, self.tokenize, self.encode, self.name = embedding, tokenize, encode, name
        for m in modules:
            m.eval().requires_grad_(False)
        self.width = int(embedding.weight.shape[1])

    def __deepcopy__(
        self, memo
    ):  # frozen and shared: an EMA or best-epoch copy of the learner reuses the tower
        return self


def frozen_tower(encoder: Any) -> FrozenTower:
    """The tower behind a vlmkd text encoder (vlmkd.text.encoders) or a domain teacher's MiniLM."""
    kind = type(encoder).__name__
    if kind == "SentenceTransformersEncoder":
        st = encoder.model
        bert = st[0].auto_model

        prep = getattr(st, "preprocess", None) or st.tokenize  # sentence-transformers 5 renamed it

        def tokenize(texts):
            return {k: v for k, v in prep(list(texts)).items() if isinstance(v, torch.Tensor)}

        def encode(tok):
            return st(dict(tok))["sentence_embedding"]

        return FrozenTower(bert.embeddings.word_embeddings, tokenize, encode, [st], "minilm")
    if kind == "OpenClipTextEncoder":
        model, tokenizer = encoder.model, encoder.tokenizer
        return FrozenTower(
            model.token_embedding,
            lambda t: {"text": tokenizer(list(t))},
            lambda tok: model.encode_text(tok["text"]),
            [model],
            "open_clip",
        )
    if kind == "HFClipTextEncoder":
        model, tokenizer = encoder.model, encoder.tokenizer

        def encode(tok):
            out = model.get_text_features(**tok)
            return getattr(out, "pooler_output", out)  # transformers 5 returns a model output

        return FrozenTower(
            model.text_model.embeddings.token_embedding,
            lambda t: dict(tokenizer(list(t), padding=True, return_tensors="pt")),
            encode,
            [model],
            "hf_clip",
        )
    raise ConfigError(f"CoOp needs an open_clip, hf_clip or sentence_transformers text encoder, got {kind}")


class PromptLearner(nn.Module):
    """Learned class-text embeddings: normalise(mean_k tower([ctx] text_ck)) for each class c.

    `class_texts`: name -> list of texts (e.g. ["Coat."] or the enriched sentences); every class the learner may be
    asked about (train and novel) must be listed. Only `ctx` is a parameter.
    """

    def __init__(
        self,
        tower: FrozenTower,
        class_texts: dict[str, list[str]],
        n_ctx: int = 4,
        init: str | None = "a photo of a",
        class_specific: bool = False,
        train_classes: list[str] | None = None,
    ):
        super().__init__()
        self.tower = tower
        self.class_texts = {k: list(v) for k, v in class_texts.items()}
        self.prefix = init.strip() if init else " ".join([PLACEHOLDER] * int(n_ctx))
        self.n_ctx = self._count_tokens(self.prefix)
        if not init and self.n_ctx != n_ctx:
            raise ConfigError(f"the CoOp placeholder is not one token in the {tower.name} tokenizer")
        self.train_classes = list(train_classes or class_texts)
        if init:  # CoOp's word init: the context starts as the embeddings of the init words
            ids = self._ids(self.tower.tokenize([self.prefix]))[0, 1 : 1 + self.n_ctx]
            base = self.tower.embedding.weight[ids].detach().clone()
        else:
            base = torch.randn(self.n_ctx, tower.width, generator=torch.Generator().manual_seed(0)) * 0.02
        rows = len(self.train_classes) if class_specific else 1
        self.ctx = nn.Parameter(base.unsqueeze(0).repeat(rows, 1, 1).float())
        self.class_specific = bool(class_specific)

    @staticmethod
    def _ids(tok: dict[str, torch.Tensor]) -> torch.Tensor:
        return tok["text"] if "text" in tok else tok["input_ids"]

    def _count_tokens(self, text: str) -> int:
        """Tokens of `text` between the start token and the end token (open_clip pads with 0 after the end)."""
        with_text = self._ids(self.tower.tokenize([text + " ."]))[0]
        without = self._ids(self.tower.tokenize(["."]))[0]
        return int((with_text != 0).sum() - (without != 0).sum())

    def context_for(self, names: list[str]) -> torch.Tensor:
        """len(names) x n_ctx x width: each class's own context, the shared one, or the mean for unknown classes."""
        if not self.class_specific:
            return self.ctx.expand(len(names), -1, -1)
        row = {n: i for i, n in enumerate(self.train_classes)}
        mean = self.ctx.mean(0)
        return torch.stack([self.ctx[row[n]] if n in row else mean for n in names])

    @contextmanager
    def _spliced(self, ctx_per_prompt: torch.Tensor):
        def hook(_module, _inputs, out):
            out = out.clone()
            out[:, 1 : 1 + self.n_ctx] = ctx_per_prompt.to(out.dtype)
            return out

        handle = self.tower.embedding.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, names: list[str] | None = None) -> torch.Tensor:
        """C x D L2-normalised class-text embeddings for `names` (default: the training classes)."""
        names = list(names or self.train_classes)
        missing = [n for n in names if n not in self.class_texts]
        if missing:
            raise ConfigError(f"CoOp has no class text for {missing[0]!r}")
        texts, owner = [], []
        for i, n in enumerate(names):
            texts += [f"{self.prefix} {t}" for t in self.class_texts[n]]
            owner += [i] * len(self.class_texts[n])
        device = self.ctx.device
        tok = {k: v.to(device) for k, v in self.tower.tokenize(texts).items()}
        owner_t = torch.as_tensor(owner, device=device)
        with self._spliced(self.context_for(names)[owner_t]):
            emb = F.normalize(self.tower.encode(tok).float(), dim=-1)
        pooled = torch.zeros(len(names), emb.shape[1], device=device).index_add_(0, owner_t, emb)
        return F.normalize(pooled, dim=-1)  # mean of a class's prompts, renormalised (as `vlmkd classtext`)


class LearnedClassText(Mapping):
    """split -> C_split x D class-text matrix from the prompt learner's current context (evaluation's view)."""

    def __init__(self, learner: PromptLearner, split_names: dict[str, list[str]]):
        self.learner, self.split_names = learner, split_names
        # one view per evaluation (EvalSpec.for_state makes a fresh one): scoring reads a split's matrix once per
        # batch, and running the text tower for each batch made a CoOp evaluation cost minutes on a CPU
        self._cache: dict[str, tuple[torch.Tensor, np.ndarray]] = {}

    def __getitem__(self, split: str) -> np.ndarray:
        ctx = self.learner.ctx.detach().clone()
        hit = self._cache.get(split)
        if hit is not None and torch.equal(hit[0], ctx):  # recomputed when the context moved since
            return hit[1]
        with torch.no_grad():
            mat = self.learner(self.split_names[split]).cpu().numpy().astype(np.float32)
        self._cache[split] = (ctx, mat)
        return mat

    def __iter__(self):
        return iter(self.split_names)

    def __len__(self) -> int:
        return len(self.split_names)

    def to_json(self) -> dict[str, Any]:
        """Every known class's learned embedding, for exports (which cannot rerun the text tower with ctx)."""
        names = list(dict.fromkeys(n for ns in self.split_names.values() for n in ns))
        with torch.no_grad():
            matrix = self.learner(names).cpu().numpy()
        return {
            "names": names,
            "matrix": np.round(matrix, 6).tolist(),
            "n_ctx": self.learner.n_ctx,
            "class_specific": self.learner.class_specific,
            "tower": self.learner.tower.name,
        }


def build_prompt_learner(
    coop: Any, embed: Any, class_texts: dict[str, list[str]], dim: int, train_classes: list[str], device
) -> PromptLearner:
    """The prompt learner for `text.coop` (section `coop`), over the tower named by the `embed` section.

    `class_texts`: name -> the texts the context goes in front of; `dim`: the class-text store's dimension, which
    the tower must match (the learned matrix replaces the stored one)."""

    encoder = build_text_encoder(embed.encoder, embed.model, embed.revision, device=str(device))
    if int(encoder.dim) != dim:
        raise ConfigError(
            f"CoOp's text tower {encoder.encoder_id!r} is {encoder.dim}-d but text.class_embeddings is {dim}-d; "
            "embed the class texts with embed.encoder"
        )
    learner = PromptLearner(
        frozen_tower(encoder), class_texts, coop.n_ctx, coop.init, coop.class_specific, train_classes
    )
    return learner.to(device)


def learned_rows(learned: dict[str, Any], names: list[str]) -> np.ndarray:
    """Rows of an exported CoOp matrix (`class_text_learned`) for `names`."""
    row = {n: i for i, n in enumerate(learned["names"])}
    unknown = [n for n in names if n not in row]
    if unknown:
        raise ConfigError(
            f"this CoOp run learned class texts for {', '.join(learned['names'])} only, not {unknown[0]!r}; "
            "train with the class in the class-text store"
        )
    return np.asarray(learned["matrix"], dtype=np.float32)[[row[n] for n in names]]
