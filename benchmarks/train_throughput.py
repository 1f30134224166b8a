"""Training images per second from WebDataset shards: `vlmkd train` vs a plain timm + torchvision loop, side by side.

Both read the same shards (N generated 400 x 300 JPEGs packed by `vlmkd data pack`), at the same batch, workers,
model (ResNet-50 by default), 224 px RandomResizedCrop + flip, SGD, bf16 autocast and channels_last on CUDA:
- vlmkd: the real composition root and loop (`vlmkd.compose.build_run(...).fit()`, cross-entropy, no eval), its
  rate taken from the step timestamps of metrics.jsonl between steps `--warmup` and `--steps` (logged every
  `--warmup` steps: the loop syncs with the GPU when it logs, so not every step, as the plain loop does not);
- plain: `webdataset.WebDataset(shards).shuffle().decode("pil")` -> torchvision transform -> timm model, the loop
  open_clip and timm users write by hand, timed over the same steps.
Also what caps each loop: each loader alone (no model; timed over whole rounds of its workers after the first, so
neither start-up nor a partial last round counts) and the model alone on one batch kept on the device. One JSON
line: `vlmkd_img_s`, `plain_img_s`, `vlmkd_vs_plain` (goal >= 0.95), `loader_img_s` (vlmkd's loader),
`plain_loader_img_s`, `loader_vs_plain`, `compute_img_s`, and `vlmkd_limit` / `plain_limit` (loader or compute).

    python benchmarks/train_throughput.py --device cuda [--n 6000 --batch 128 --steps 40 --workers 14]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_throughput import RECIPE, make_jpegs  # noqa: E402
from vlmkd.compose import build_run  # noqa: E402
from vlmkd.config import load_config  # noqa: E402
from vlmkd.data import build_manifests  # noqa: E402
from vlmkd.data.pack import pack  # noqa: E402

LOADER_ROUNDS = 4  # whole rounds of every worker timed for each loader alone


def round_rate(batches, workers: int, rounds: int) -> tuple[float, int]:
    """(img/s, images timed) of a loader in steady state: timed from the end of its first round (batch `workers`:
    every worker has started) over `rounds` whole rounds more. A DataLoader hands batch i to worker i % workers, so
    whole rounds keep every worker busy; a partial last round (idle workers) or the start-up round would not."""
    t0, n = None, 0
    for i, b in enumerate(batches):
        if i == workers:
            t0 = time.perf_counter()
        elif i > workers:
            n += len(b["label"] if isinstance(b, dict) else b[1])
        if i == workers * (rounds + 1):
            break
    else:
        raise SystemExit(f"the loader ended before {workers * (rounds + 1)} batches; raise --n")
    return n / (time.perf_counter() - t0), n


def vlmkd_loader_rate(trainer, workers: int) -> float:
    """vlmkd's training loader alone (the loop's own, no model), whole rounds of each epoch, over epochs until at
    least LOADER_ROUNDS rounds are timed: every epoch starts fresh workers, as the loop does, so each is timed after its first."""
    per_epoch = trainer.steps_per_epoch // workers - 1  # whole rounds after the first one
    if per_epoch < 1:
        raise SystemExit(
            f"{trainer.steps_per_epoch} batches per epoch is under 2 rounds of {workers} workers"
        )
    secs = imgs = 0.0
    epoch = 0
    while epoch * per_epoch < LOADER_ROUNDS:
        trainer.data.sampler.set_epoch(epoch)
        trainer.data.dataset.set_epoch(epoch)
        rate, n = round_rate(trainer._loader_from(0), workers, per_epoch)
        secs, imgs, epoch = secs + n / rate, imgs + n, epoch + 1
    return imgs / secs


def vlmkd_rate(cfg, run: Path, args) -> tuple[float, float]:
    """(train img/s from metrics.jsonl step times after `warmup` steps, loader-only img/s)."""
    r = build_run(cfg, run)
    loader = vlmkd_loader_rate(r.trainer, args.workers)
    r.fit()
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    at = {rec["step"]: rec["time"] for rec in recs}  # logged every `warmup` steps: a host sync only there
    last = max(at)
    return (last - args.warmup) * cfg.data.batch_size / (at[last] - at[args.warmup]), loader


def plain_loader(shards: list[str], args, device: torch.device):
    """The loader people write by hand: webdataset shard shuffle, a 1,000-sample buffer, PIL decode, torchvision
    transform, batched in the workers (an endless stream)."""
    import torchvision.transforms as T
    import webdataset as wds

    tf = T.Compose(
        [
            T.RandomResizedCrop(224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    ds = (
        wds.WebDataset(shards, shardshuffle=True, empty_check=False)
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg", "cls")
        .map_tuple(tf, int)
        .batched(args.batch, partial=False)
        .repeat()
    )
    return wds.WebLoader(ds, batch_size=None, num_workers=args.workers, pin_memory=device.type == "cuda")


def plain_steps(batches, args, device: torch.device) -> float:
    """img/s of the plain timm loop over `batches` (x, y), timed over steps `warmup`..`steps`."""
    import timm

    model = timm.create_model(args.model, num_classes=10).to(device)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    it = iter(batches)
    t0, n = None, 0
    for step in range(args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= args.warmup:
            n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def compute_rate(args, device: torch.device) -> float:
    """The same loop on one batch kept on the device: the model's ceiling, with no loader at all."""
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    return plain_steps(itertools.repeat((x, y)), args, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    # small shards: the plain streaming loop gives each worker whole shards, so fewer shards than workers would
    # idle workers there (webdataset issue 188) and make the comparison unfair to it
    ap.add_argument("--shard-mb", type=float, default=8.0)
    args = ap.parse_args()
    if args.steps % args.warmup:
        raise SystemExit("--steps must be a multiple of --warmup (the vlmkd loop logs, and is timed, there)")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ["VLMKD_INDEX_CACHE"] = str(d / "index_cache")
        make_jpegs(d / "files", args.n)
        files = load_config(
            RECIPE,
            [
                "data.format=image_folder",
                f"data.root={d / 'files'}",
                "data.val_list=null",
                "data.test_list=null",
            ],
        )
        pack({"train": build_manifests(files.data)["train"]}, d / "shards", int(args.shard_mb * 1e6))
        shards = sorted(str(p) for p in (d / "shards").glob("*.tar"))
        cfg = load_config(
            RECIPE,
            [
                "data.format=wds",
                f"data.root={d / 'shards'}",
                "data.train_list=null",
                "data.val_list=null",
                "data.test_list=null",
                f"data.num_workers={args.workers}",
                f"data.batch_size={args.batch}",
                f"model.name={args.model}",
                "model.head=classifier",
                "losses.cls.name=ce",
                "losses.kd.weight=0",
                "losses.text.weight=0",
                "teacher.name=null",
                f"train.device={args.device}",
                f"train.max_steps={args.steps}",
                "train.epochs=100",
                # the loop syncs with the GPU only when it logs; every step (log_every=1) would be a sync the
                # plain loop does not make; steps `warmup` and `steps` are logged (steps a multiple of warmup)
                f"train.log_every={args.warmup}",
                "train.tensorboard=false",
                "eval.every=0",
                "eval.select_on=val",
            ],
        )
        compute = compute_rate(args, device)
        plain_loader_rate, _ = round_rate(plain_loader(shards, args, device), args.workers, LOADER_ROUNDS)
        plain = plain_steps(plain_loader(shards, args, device), args, device)
        ours, loader = vlmkd_rate(cfg, d / "run", args)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    out = {
        "device": name,
        "model": args.model,
        "batch": args.batch,
        "workers": args.workers,
        "shards": len(shards),
        "steps_timed": args.steps - args.warmup,
        "vlmkd_img_s": round(ours, 1),
        "plain_img_s": round(plain, 1),
        "vlmkd_vs_plain": round(ours / plain, 3),
        "loader_img_s": round(loader, 1),
        "plain_loader_img_s": round(plain_loader_rate, 1),
        "loader_vs_plain": round(loader / plain_loader_rate, 3),
        "compute_img_s": round(compute, 1),
        # what caps each loop: the slower of its loader alone and the model on a device-resident batch
        "vlmkd_limit": "loader" if loader < compute else "compute",
        "plain_limit": "loader" if plain_loader_rate < compute else "compute",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
