"""The domain teacher: a small CLIP-style VLM that vlmkd trains itself (the LiT recipe, text side locked).

For domains where no pretrained CLIP exists (and for the offline demo), an image tower is trained contrastively
into a *frozen* text encoder's space from (image, text) pairs, the texts being class prompts, enriched class
sentences or captions. The result embeds images and texts in one space, so it classifies zero-shot, ranks
attribute phrases (the `interrogate` describer) and serves as the CLIP teacher of OOD distillation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from vlmkd.config import DataConfig, from_dict
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.manifest import Manifest
from vlmkd.data.samplers import build_sampler
from vlmkd.data.transforms import build_transform, preprocess_config
from vlmkd.errors import ArtifactError
from vlmkd.eval.metrics import classification_metrics
from vlmkd.students import create_student
from vlmkd.teachers.features import class_text_features
from vlmkd.text.encoders import build_text_encoder
from vlmkd.utils.io import artifact_key, atomic_path, read_json, write_json
from vlmkd.utils.progress import progress


@dataclass
class DomainTrainSettings:
    backbone: str = "cnn_small"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = 0.07  # initial; learnable like CLIP's logit scale
    seed: int = 0
    image_size: int | str = "auto"  # the tower's input size; auto = min(data.image_size, AUTO_MAX_SIZE)


# The auto input size's cap: cnn_small's cost grows with the square of the size (its first convolutions run at full
# resolution), and on a 10-class folder of ~1k photos 64 px scored no lower than 96-224 px (benchmarks/domain_teacher.py)
AUTO_MAX_SIZE = 64


def resolve_size(
    settings: DomainTrainSettings, data_cfg: DataConfig
) -> tuple[DomainTrainSettings, DataConfig]:
    """`settings` with its image size resolved, and the data config the tower is trained and fed with (the
    run's, at the tower's own size; it is saved with the teacher, so every later stage preprocesses alike)."""
    size = settings.image_size
    size = min(data_cfg.image_size, AUTO_MAX_SIZE) if size == "auto" else int(size)
    return replace(settings, image_size=size), replace(data_cfg, image_size=size)


class DomainTeacher(nn.Module):
    def __init__(
        self, tower: nn.Module, text_encoder: Any, data_cfg: DataConfig, logit_scale: float, spec: dict
    ):
        super().__init__()
        self.tower = tower
        self.text_encoder = text_encoder  # frozen; encode(list[str]) -> normalised numpy rows
        self.data_cfg = data_cfg
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.spec = spec
        self.embed_dim = int(spec["embed_dim"])
        self.teacher_id = f"domain:{spec.get('key', 'untrained')[:16]}"
        self._transform = build_transform(data_cfg, train=False)

    def preprocess_config(self) -> dict[str, Any]:
        return preprocess_config(self.data_cfg)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixels)["embedding"]

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.text_encoder.encode(list(texts)), dtype=np.float32))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tower.state_dict().items()}
        with atomic_path(folder / "tower.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(
            folder / "teacher.json",
            {**self.spec, "logit_scale": float(self.logit_scale), "data": asdict(self.data_cfg)},
        )


def _tower(backbone: str, in_chans: int, embed_dim: int) -> nn.Module:
    return create_student(backbone, num_classes=1, in_chans=in_chans, head="embedding", embed_dim=embed_dim)


def load_domain_teacher(
    path: str | Path, device: str | torch.device = "cpu", text_encoder: Any = None
) -> DomainTeacher:
    folder = Path(path)
    if not (folder / "teacher.json").is_file():
        raise ArtifactError(
            f"{str(folder)!r} is not a domain teacher folder (no teacher.json); run `vlmkd teacher train`"
        )
    spec = read_json(folder / "teacher.json")

    data_cfg = from_dict(DataConfig, spec.pop("data"))
    logit_scale = spec.pop("logit_scale")
    tower = _tower(spec["backbone"], data_cfg.in_chans, spec["embed_dim"])
    tower.load_state_dict(load_file(str(folder / "tower.safetensors")))
    if text_encoder is None:
        te = spec["text_encoder"]
        text_encoder = build_text_encoder(te["name"], model=te.get("model"), revision=te.get("revision"))
    teacher = DomainTeacher(tower, text_encoder, data_cfg, logit_scale, spec)
    return teacher.to(device).eval().requires_grad_(False)


def domain_teacher_key(
    pool: Manifest, class_texts: list[list[str]], encoder_info: dict, settings, data_cfg: DataConfig
) -> str:
    """Identity of a trained domain teacher: what it learned from and how, its input pipeline included (a rerun
    with the same key reuses it; one at another image size or augmentation is another teacher)."""
    settings, data_cfg = resolve_size(settings, data_cfg)
    return artifact_key(
        {
            "backbone": settings.backbone,
            "settings": asdict(settings),
            "preprocess": preprocess_config(data_cfg),
            "augment": data_cfg.augment,
            "text_encoder": encoder_info,
            "trained_on": {"manifest_key": pool.key(), "n": len(pool)},
            "class_texts": class_texts,
        }
    )


def _masked_nce(
    img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where other same-class pairs are not negatives (several images share a class text)."""
    logits = scale * img @ txt.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=img.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(labels), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def zero_shot_eval(
    teacher: DomainTeacher,
    manifest: Manifest,
    text_sets: dict[str, list[list[str]]],
    device: str | torch.device = "cpu",
    classes: list[int] | None = None,
    batch_size: int = 1000,
) -> dict[str, dict[str, Any]]:
    """Zero-shot accuracy for each named set of class texts (e.g. plain vs enriched), the images embedded once.

    `classes`: score only the images of these classes, among these classes' texts (e.g. the novel classes)."""

    classes = list(range(manifest.num_classes)) if classes is None else list(classes)
    keep = np.isin(manifest.labels, classes)
    feats = image_embeddings(teacher, manifest, device, batch_size)[torch.from_numpy(keep)]
    lut = {c: i for i, c in enumerate(classes)}
    labels = np.array([lut[int(y)] for y in manifest.labels[keep]])
    out = {}
    for kind, texts in text_sets.items():
        pred = (feats @ class_embeddings(teacher, [texts[c] for c in classes]).T).argmax(1).numpy()
        m = classification_metrics(pred, labels, len(classes))
        out[kind] = {
            "overall": m["overall"],
            "mean_per_class": m["mean_per_class"],
            "per_class": m["per_class"],
        }
    return out


def class_embeddings(teacher: Any, class_texts: list[list[str]]) -> torch.Tensor:
    """C x D normalised class embeddings (each class's normalised text embeddings averaged)."""

    return class_text_features(teacher, class_texts)


@torch.no_grad()
def image_embeddings(
    teacher: DomainTeacher, manifest: Manifest, device: str | torch.device = "cpu", batch_size: int = 1000
) -> torch.Tensor:
    ds = ManifestDataset(manifest, teacher._transform, on_bad_image=teacher.data_cfg.on_bad_image)
    out = torch.zeros(len(manifest), teacher.embed_dim)
    for b in progress(DataLoader(ds, batch_size=batch_size, collate_fn=collate_skip), desc="teacher images"):
        if "image" in b:
            out[b["index"]] = F.normalize(teacher.encode_image(b["image"].to(device)).float(), dim=-1).cpu()
    return out


def train_domain_teacher(
    pool: Manifest,
    class_texts: list[list[str]],
    text_encoder: Any,
    data_cfg: DataConfig,
    settings: DomainTrainSettings,
    device: str | torch.device = "cpu",
    encoder_info: dict | None = None,
    log=None,
) -> DomainTeacher:
    """Train the image tower on `pool` against the frozen text encoder's embeddings of `class_texts`."""
    encoder_info = encoder_info or {"name": getattr(text_encoder, "encoder_id", "unknown")}
    key = domain_teacher_key(pool, class_texts, encoder_info, settings, data_cfg)
    settings, data_cfg = resolve_size(settings, data_cfg)
    torch.manual_seed(settings.seed)
    flat = [t for texts in class_texts for t in texts]
    owner = torch.tensor([c for c, texts in enumerate(class_texts) for _ in texts])
    table = torch.from_numpy(np.asarray(text_encoder.encode(flat), dtype=np.float32))  # locked text side
    table = F.normalize(table, dim=-1).to(device)
    by_class = [torch.nonzero(owner == c).flatten() for c in range(len(class_texts))]
    tower = _tower(settings.backbone, data_cfg.in_chans, table.shape[1]).to(device)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / settings.temperature), device=device))
    opt = torch.optim.AdamW(
        [*tower.parameters(), logit_scale], lr=settings.lr, weight_decay=settings.weight_decay
    )
    ds = ManifestDataset(pool, build_transform(data_cfg, train=True), on_bad_image=data_cfg.on_bad_image)
    ds.seed = settings.seed
    sampler = build_sampler("instance", pool.labels, seed=settings.seed)
    dl = DataLoader(
        ds,
        batch_size=settings.batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_skip,
        num_workers=data_cfg.num_workers,
    )
    total = settings.epochs * len(dl)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=max(total, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(settings.seed)
    tower.train()
    for epoch in range(settings.epochs):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        bar = progress(dl, desc=f"domain teacher {epoch + 1}/{settings.epochs}", unit="step")
        for batch in bar:
            if "image" not in batch:
                continue
            labels = batch["label"].to(device)
            pick = torch.stack(
                [
                    by_class[int(y)][torch.randint(len(by_class[int(y)]), (1,), generator=gen)]
                    for y in batch["label"]
                ]
            ).flatten()
            img = F.normalize(tower(batch["image"].to(device))["embedding"], dim=-1)
            loss = _masked_nce(img, table[pick.to(device)], labels, logit_scale.exp().clamp(max=100))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if log is not None:
            log({"epoch": epoch, "teacher_loss": loss.item()})
    spec = {
        "backbone": settings.backbone,
        "embed_dim": int(table.shape[1]),
        "settings": asdict(settings),
        "text_encoder": encoder_info,
        "trained_on": {"manifest_key": pool.key(), "n": len(pool)},
        "class_texts": class_texts,
    }
    spec["key"] = key
    teacher = DomainTeacher(tower.eval(), text_encoder, data_cfg, float(logit_scale.detach()), spec)
    return teacher.to(device).requires_grad_(False)


def settings_from_config(domain_cfg: Any, **overrides: Any) -> DomainTrainSettings:
    fields = {f: getattr(domain_cfg, f) for f in DomainTrainSettings.__dataclass_fields__}
    return DomainTrainSettings(**{**fields, **overrides})


def fit_domain_teacher(
    pool: Manifest,
    class_texts: list[list[str]],
    text_encoder: Any,
    encoder_info: dict,
    data_cfg: DataConfig,
    settings: DomainTrainSettings,
    output: str | Path,
    device: str | torch.device = "cpu",
    log=None,
) -> tuple[DomainTeacher, Path]:
    """Train (or reuse, when `output/<key16>` holds one with the same key) a domain teacher; returns it and its folder."""
    key = domain_teacher_key(pool, class_texts, encoder_info, settings, data_cfg)
    folder = Path(output) / key[:16]
    if (folder / "teacher.json").is_file() and read_json(folder / "teacher.json").get("key") == key:
        if log is not None:
            log({"event": "domain_teacher_reused", "folder": str(folder)})
        return load_domain_teacher(folder, device, text_encoder=text_encoder), folder
    teacher = train_domain_teacher(
        pool, class_texts, text_encoder, data_cfg, settings, device, encoder_info=encoder_info, log=log
    )
    teacher.save(folder)
    return teacher, folder
