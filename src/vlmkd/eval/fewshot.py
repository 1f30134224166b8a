"""Few-shot adaptation to novel classes (the OOD paper's 5-shot protocol) and Tip-Adapter-style retrieval.

Fine-tuning starts from the distilled student and trains on base-class images plus N support images per novel
class, with batches in which at most half the samples are few-shot ones (the paper's balanced sampler), using the
vision-language classification loss over base + novel class texts. Support images come from the novel classes'
training images (`ood`); any that are also in the test split (`ood_test`, matched by sample id, as with the
paper's lists where both are X_ood) are removed from it before scoring.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from vlmkd.config import DataConfig
from vlmkd.data.dataset import ManifestDataset, collate_skip
from vlmkd.data.manifest import Manifest
from vlmkd.data.transforms import build_transform
from vlmkd.errors import ConfigError
from vlmkd.eval.metrics import classification_metrics
from vlmkd.eval.predict import cosine_logits, student_outputs
from vlmkd.utils.progress import progress


def sample_support(manifest: Manifest, shots: int, seed: int = 0) -> np.ndarray:
    """Indices of `shots` images per class, seeded (the released code took the first N of each folder)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(manifest.num_classes):
        idx = np.nonzero(manifest.labels == c)[0]
        if len(idx) < shots:
            raise ConfigError(
                f"class {manifest.class_names[c]!r} has {len(idx)} images, fewer than {shots} shots"
            )
        out.append(rng.choice(idx, size=shots, replace=False))
    return np.sort(np.concatenate(out))


def draw_support(pool: Manifest, shots: int, seed: int = 0) -> Manifest:
    """The K-shot support of `pool` (the novel classes' training images): few-shot evaluation adapts on it and the
    "support" rule of generalized calibration (vlmkd.eval.generalized) chooses gamma on it, the same images."""
    return pool.subset(sample_support(pool, shots, seed), "support")


def without_support(test: Manifest, support: Manifest) -> Manifest:
    """`test` minus the support images, matched by sample id (a no-op when the two are disjoint)."""
    held = set(support.ids)
    keep = [i for i, sid in enumerate(test.ids) if sid not in held]
    return test if len(keep) == len(test) else test.subset(keep)


class _TwoPartDataset(torch.utils.data.Dataset):
    def __init__(self, base: ManifestDataset, support: ManifestDataset, label_offset: int):
        self.base, self.support, self.offset = base, support, label_offset

    def __len__(self):
        return len(self.base) + len(self.support)

    def __getitem__(self, key):
        # key = (step, index): the step is the augmentation epoch (per-sample seed = seed, epoch, index), so a
        # support image drawn at many steps gets a new crop/flip each time; set in the worker that loads it
        step, i = key
        part, j = (self.base, i) if i < len(self.base) else (self.support, i - len(self.base))
        part.set_epoch(step)
        item = part[j]
        if item is not None and part is self.support:
            item = {**item, "label": item["label"] + self.offset}
        return item


class BalancedFewShotSampler(Sampler[list[int]]):
    """Batches with at most half few-shot samples: each batch draws min(B/2, n_support) support images (with
    replacement over epochs) and fills the rest with base images."""

    def __init__(self, n_base: int, n_support: int, batch_size: int, steps: int, seed: int = 0):
        self.n_base, self.n_support, self.bs, self.steps, self.seed = (
            n_base,
            n_support,
            batch_size,
            steps,
            seed,
        )

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        k = min(self.bs // 2, self.n_support)
        for _ in range(self.steps):
            sup = self.n_base + rng.choice(self.n_support, size=k, replace=False)
            base = rng.choice(self.n_base, size=self.bs - k, replace=self.n_base < self.bs - k)
            yield np.concatenate([base, sup]).tolist()

    def __len__(self):
        return self.steps


def finetune_few_shot(
    student: torch.nn.Module,
    base: Manifest,
    support: Manifest,
    class_text: torch.Tensor,
    data_cfg: DataConfig,
    steps: int = 200,
    lr: float = 1e-3,
    temperature: float = 0.07,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """A fine-tuned copy of `student` (embedding head) over base + novel class texts (`class_text`: (B+N) x D)."""
    model = copy.deepcopy(student).to(device).train()
    tf = build_transform(data_cfg, train=True)
    b_ds, s_ds = ManifestDataset(base, tf), ManifestDataset(support, tf)
    b_ds.seed = s_ds.seed = seed
    ds = _TwoPartDataset(b_ds, s_ds, base.num_classes)
    sampler = BalancedFewShotSampler(len(base), len(support), batch_size, steps, seed)
    dl = DataLoader(
        ds,
        batch_sampler=[[(step, i) for i in batch] for step, batch in enumerate(sampler)],
        collate_fn=collate_skip,
        num_workers=data_cfg.num_workers,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    w = F.normalize(class_text.float().to(device), dim=-1)
    for batch in progress(dl, desc="5-shot fine-tune", unit="step"):
        emb = F.normalize(model(batch["image"].to(device))["embedding"], dim=-1)
        loss = F.cross_entropy(emb @ w.T / temperature, batch["label"].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def tip_adapter_logits(
    query: np.ndarray,
    class_text: np.ndarray,
    keys: np.ndarray,
    key_labels: np.ndarray,
    alpha: float = 1.0,
    beta: float = 5.5,
) -> np.ndarray:
    """Training-free retrieval (the paper's ablation): cos(q, w) + alpha * sum_m exp(-beta (1 - q.k_m)) per class.

    As in the released code, the zero-shot term has no temperature. `keys` are normalised support features
    (several augmented views per support image allowed), `key_labels` their classes.
    """
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    w = class_text / np.maximum(np.linalg.norm(class_text, axis=1, keepdims=True), 1e-12)
    k = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    onehot = np.eye(len(w))[key_labels]
    return q @ w.T + alpha * np.exp(-beta * (1 - q @ k.T)) @ onehot


def few_shot_eval(
    student: torch.nn.Module,
    manifests: dict[str, Manifest],
    class_text: dict[str, np.ndarray],
    data_cfg: DataConfig,
    shots: int = 5,
    method: str = "finetune",
    steps: int = 150,
    seed: int = 0,
    temperature: float = 0.07,
    device: str | torch.device = "cpu",
) -> dict:
    """N-shot accuracy on the novel classes' test images (`ood_test`), support drawn from their training images
    (`ood`), by fine-tuning (the paper's protocol) or training-free Tip-Adapter retrieval (its ablation)."""

    if not {"ood", "ood_test"} <= set(manifests) or "ood_test" not in class_text:
        raise ConfigError(
            "few-shot evaluation needs novel classes (data.split.num_novel > 0 or novel_classes) "
            "and an embedding student with class texts for them"
        )
    pool, test = manifests["ood"], manifests["ood_test"]
    if pool.class_names != test.class_names:
        raise ConfigError(
            "the novel classes' train and test splits list different classes; rebuild the manifests"
        )
    support = draw_support(pool, shots, seed)
    test = without_support(test, support)  # the paper scores X_ood minus the shots when both come from it
    novel = class_text["ood_test"]
    if method == "finetune":
        both = torch.from_numpy(np.concatenate([class_text["train"], novel]))
        model = finetune_few_shot(
            student,
            manifests["train"],
            support,
            both,
            data_cfg,
            steps=steps,
            temperature=temperature,
            seed=seed,
            device=device,
        )
        out = student_outputs(model, test, data_cfg, device, desc=f"eval {shots}-shot")
        logits = cosine_logits(out["embedding"], novel, temperature)
    elif method == "tip_adapter":
        out = student_outputs(student, test, data_cfg, device, desc="eval queries")
        keys = student_outputs(student, support, data_cfg, device, desc="support keys")["embedding"]
        logits = tip_adapter_logits(out["embedding"], novel, keys, support.labels)
    else:
        raise ConfigError(f"few-shot method must be finetune or tip_adapter, got {method!r}")
    m = classification_metrics(logits.argmax(1), out["labels"], test.num_classes)
    return {
        "shots": shots,
        "method": method,
        "seed": seed,
        **{k: v for k, v in m.items() if k != "confusion"},
    }
