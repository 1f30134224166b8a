"""Contrastive distillation of per-image text (VLM descriptions) into the student's projected features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.errors import ConfigError
from vlmkd.losses import LOSSES
from vlmkd.losses.batch import in_batch_ce
from vlmkd.losses.classification import require_positive
from vlmkd.losses.kd import SoftKD

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on 1/temperature
DIRECTIONS = ("image_to_text", "text_to_image", "symmetric")


def same_class_negatives(labels: torch.Tensor) -> torch.Tensor:
    """B x B bool mask, True where j != i and labels[j] == labels[i] (same-class pairs to drop from the negatives)."""
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)


def pool_text(text_emb: torch.Tensor) -> torch.Tensor:
    """B x D -> normalised; B x K x D -> normalise each, average the K, renormalise.

    All-zero rows (padding for images with fewer descriptions) do not change the direction of the average.
    """
    if text_emb.dim() == 3:
        text_emb = F.normalize(text_emb, dim=-1).mean(dim=1)
    elif text_emb.dim() != 2:
        raise ConfigError(f"text_emb must be B x D or B x K x D, got shape {tuple(text_emb.shape)}")
    return F.normalize(text_emb, dim=-1)


@LOSSES.register("text_nce")
class TextNCE(nn.Module):
    """InfoNCE between the student's projected features and the embeddings of its own images' descriptions.

    logits_ij = cos(proj_i, text_j) / tau over the batch (in-batch negatives), targets on the diagonal.
    `direction`: image_to_text = CE over rows (each image picks its text), text_to_image = CE over columns,
    symmetric = the mean of both. With `mask_same_class`, off-diagonal pairs of the same class are set to -inf
    (removed from the negatives, in every direction; the positive on the diagonal is never masked).
    With `learnable_temperature`, 1/tau is learned as exp(logit_scale) (CLIP's parameterisation), initialised at
    1/temperature and clamped to at most 100.
    """

    inputs = ("proj", "text_emb", "labels")
    batch_coupled = ("proj", "text_emb", "labels")  # in-batch negatives: gathered over ranks under DDP
    local_rows = True  # accepts rows= (train.local_loss; see vlmkd.losses.batch)

    def __init__(
        self,
        temperature: float = 0.07,
        direction: str = "image_to_text",
        mask_same_class: bool = True,
        learnable_temperature: bool = False,
    ):
        super().__init__()
        temperature = require_positive("temperature", temperature)
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        self.direction = direction
        self.mask_same_class = bool(mask_same_class)
        self.learnable_temperature = bool(learnable_temperature)
        if self.learnable_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self.register_buffer("logit_scale", torch.tensor(math.log(1.0 / temperature)), persistent=False)
            self._fixed_temperature = temperature

    @property
    def temperature(self) -> float:
        if not self.learnable_temperature:
            return self._fixed_temperature
        return 1.0 / float(self.scale().detach())

    def scale(self) -> torch.Tensor:
        """1/tau (a tensor; it carries the gradient when the temperature is learnable)."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(
        self, proj: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        s = F.normalize(proj, dim=-1)
        t = pool_text(text_emb).to(s.dtype)
        if t.shape != s.shape:
            raise ConfigError(
                f"text_nce: proj is {tuple(s.shape)} but text_emb pools to {tuple(t.shape)}; set the "
                "student's embed_dim to the text-embedding dimension"
            )
        scale = self.scale().to(s.dtype) if self.learnable_temperature else 1.0 / self._fixed_temperature
        drop = same_class_negatives(labels) if self.mask_same_class else None
        if self.direction == "image_to_text":
            return in_batch_ce(s, t, scale, rows, drop)
        if self.direction == "text_to_image":
            return in_batch_ce(t, s, scale, rows, drop)
        return 0.5 * (in_batch_ce(s, t, scale, rows, drop) + in_batch_ce(t, s, scale, rows, drop))


@LOSSES.register("text_soft")
class DescriptionSoftLabels(SoftKD):
    """Descriptions as a second teacher: each image's description embedding, scored against the class texts,
    gives soft labels p_t = softmax(desc . class_text / desc_temperature); KL(p_t || student) in the Hinton KD form
    (`temperature`, and `logit_adjust` as the `kd` loss). Unlike text_nce it needs no projection head: the
    description steers the classifier directly, towards the classes it reads like.
    """

    inputs = ("logits", "text_emb", "class_text")

    def __init__(
        self,
        desc_temperature: float = 0.05,
        temperature: float = 1.0,
        logit_adjust: bool = False,
        class_counts: list[int] | None = None,
    ):
        super().__init__(temperature, logit_adjust, class_counts)
        self.desc_temperature = require_positive("desc_temperature", desc_temperature)

    def forward(self, logits: torch.Tensor, text_emb: torch.Tensor, class_text: torch.Tensor) -> torch.Tensor:
        t = pool_text(text_emb).to(logits.dtype)
        teacher = t @ F.normalize(class_text.to(logits.dtype), dim=-1).T / self.desc_temperature
        return super().forward(logits, teacher)


@LOSSES.register("text_rkd")
class TextRelational(nn.Module):
    """Relational distillation of description-to-description similarities (RKD-style, in distribution form).

    For each image i, the target over the other images j of the batch is softmax_j(cos(desc_i, desc_j) / tau_t)
    and the student's is softmax_j(cos(proj_i, proj_j) / tau); the loss is KL(target || student) averaged over i.
    The diagonal is excluded. Only the structure of the descriptions is distilled, not their absolute position in
    the text space, so the student's embedding need not live in that space (any embed_dim works).
    `input="features"` distills it into the backbone's pooled features instead of the embedding head, leaving that
    head to the terms that place it in the teacher's space (vl_cls, im_cst: the combined student).
    """

    inputs = ("proj", "text_emb")
    batch_coupled = ("proj", "text_emb")  # the other samples are the relation's other end

    def __init__(self, temperature: float = 0.1, text_temperature: float = 0.1, input: str = "proj"):
        super().__init__()
        self.temperature = require_positive("temperature", temperature)
        self.text_temperature = require_positive("text_temperature", text_temperature)
        if input not in ("proj", "features"):
            raise ConfigError(f"text_rkd: input must be proj or features, got {input!r}")
        self.inputs = self.batch_coupled = (input, "text_emb")

    def forward(self, proj: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        s = F.normalize(proj, dim=-1)
        t = pool_text(text_emb).to(s.dtype)
        n = s.shape[0]
        if n < 3:  # with fewer than two other samples the distribution is a constant
            return s.sum() * 0.0
        off = ~torch.eye(n, dtype=torch.bool, device=s.device)
        sim_s = (s @ s.T / self.temperature)[off].view(n, n - 1)
        sim_t = (t @ t.T / self.text_temperature)[off].view(n, n - 1)
        log_p_s = F.log_softmax(sim_s, dim=-1)
        log_p_t = F.log_softmax(sim_t.detach(), dim=-1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
