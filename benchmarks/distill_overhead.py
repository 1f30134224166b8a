"""Training-step cost of the full VLM-KD task relative to plain cross-entropy, same student and batch.

    python benchmarks/distill_overhead.py [--model cnn_small] [--batch 128] [--steps 30] [--size 28]
    python benchmarks/distill_overhead.py --device cuda [--amp] [--channels-last]

Side by side in one run:
  ce                      student + cross-entropy
  vlmkd (cached)          student + balanced softmax + KD from cached teacher logits + text NCE on cached
                          description embeddings (what `vlmkd train` does with teacher.mode=cached)
  vlmkd (live teacher)    the same with the vision teacher run on every batch (teacher.mode=live)
Prints ms/step and the ratios to ce (target for the cached task: at most 1.10). On `--device cuda` every step ends
with torch.cuda.synchronize(), so the times are the GPU's; `--amp` runs the forward under bf16 autocast, as
`vlmkd train` does with train.amp.

Then the teacher's views, side by side (`--no-views` skips them): the demo's balanced_softmax + KD from a zero-shot
CLIP-style teacher (a `--tower` image tower, the demo teacher's shape, random weights) on Fashion-MNIST
(`--data-root`), each step = the real data pipeline (ManifestDataset items, in this process) + the task step:
  clean    cached features of the un-augmented image (clip.view=clean)
  replay   cached features of K stored views, one replayed per sample: parameters read, view re-applied
           (clip.view=replay)
  live     the teacher run on the student's own crop every step (teacher.mode=live, consistent view)
The last line is one JSON object with every ratio, `replay_vs_clean_step` (target <= 1.10) and `live_vs_clean_step`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlmkd.losses import build
from vlmkd.students import create_student
from vlmkd.tasks.distill import DistillTask, LossSpec
from vlmkd.tasks.providers import LiveTeacher, Provider


def time_steps(task: DistillTask, batch: dict, steps: int, device: torch.device, amp: bool) -> float:
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.01, momentum=0.9)
    task.train()
    cuda = device.type == "cuda"
    for i in range(steps + 3):
        if i == 3:  # warm-up steps excluded
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = task(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn_small")
    ap.add_argument("--teacher", default="resnet20_cifar", help="vision teacher for the live variant")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--chans", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--text-dim", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for the forward (--device cuda only)")
    ap.add_argument(
        "--channels-last", action="store_true", help="channels_last models and images (cuda only)"
    )
    ap.add_argument("--no-views", action="store_true", help="skip the clean / replay / live teacher views")
    ap.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--tower", default="cnn_small", help="the zero-shot teacher's image tower (views)")
    ap.add_argument("--num-views", type=int, default=10, help="K stored views per image (replay)")
    ap.add_argument("--view-samples", type=int, default=4096, help="training images in the view comparison")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("distill_overhead.py: error: --device cuda, but torch sees no CUDA device")
    if (args.amp or args.channels_last) and args.device != "cuda":
        sys.exit("distill_overhead.py: error: --amp and --channels-last need --device cuda")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    B, C, D = args.batch, args.classes, args.text_dim
    counts = [int(5000 * 100 ** (-i / (C - 1))) for i in range(C)]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    batch = {
        "image": torch.randn(B, args.chans, args.size, args.size).to(device, memory_format=fmt),
        "label": torch.randint(0, C, (B,)).to(device),
        "teacher_logits": torch.randn(B, C).to(device),
        "text_emb": torch.randn(B, D).to(device),
    }

    def student(head="classifier"):
        torch.manual_seed(0)
        return create_student(
            args.model, num_classes=C, in_chans=args.chans, head=head, embed_dim=D if head == "both" else 0
        )

    def place(task: DistillTask) -> DistillTask:
        return task.to(device, memory_format=fmt) if args.channels_last else task.to(device)

    ce = place(DistillTask(student(), [LossSpec("cls", 1.0, build("ce"))]))

    def full_terms():
        return [
            LossSpec("cls", 1.0, build("balanced_softmax", class_counts=counts)),
            LossSpec("kd", 1.0, build("kd", temperature=2.0)),
            LossSpec("text", 1.0, build("text_nce", temperature=0.07)),
        ]

    # cached: the teacher logits and description embeddings arrive with the batch (rows read by the dataset)
    cached_src = {"teacher_logits": Provider("teacher_logits"), "text_emb": Provider("text_emb")}
    cached = place(DistillTask(student("both"), full_terms(), providers=cached_src))
    teacher = create_student(args.teacher, num_classes=C, in_chans=args.chans).eval().requires_grad_(False)
    live_src = {"teacher_logits": LiveTeacher("teacher_logits", teacher), "text_emb": Provider("text_emb")}
    live = place(DistillTask(student("both"), full_terms(), providers=live_src))
    live_batch = {k: v for k, v in batch.items() if k != "teacher_logits"}

    # Interleaved rounds, median per task: background load affects all three alike.
    rounds = {"ce": [], "cached": [], "live": []}
    for _ in range(args.rounds):
        rounds["ce"].append(time_steps(ce, batch, args.steps, device, args.amp))
        rounds["cached"].append(time_steps(cached, batch, args.steps, device, args.amp))
        rounds["live"].append(time_steps(live, live_batch, args.steps, device, args.amp))
    t_ce, t_cached, t_live = (statistics.median(rounds[k]) for k in ("ce", "cached", "live"))
    where = (
        f"device cuda ({torch.cuda.get_device_name(device)}), {'bf16 autocast' if args.amp else 'fp32'}"
        + (", channels_last" if args.channels_last else "")
        if device.type == "cuda"
        else f"device cpu, torch threads {torch.get_num_threads()}"
    )
    print(
        f"student {args.model}, batch {B} x {args.chans}x{args.size}x{args.size}, {C} classes, text dim {D}, "
        f"live teacher {args.teacher}, {where}"
    )
    print(f"{'task':<22}{'ms/step':>10}{'ratio to ce':>14}")
    for name, t in (("ce", t_ce), ("vlmkd (cached)", t_cached), ("vlmkd (live teacher)", t_live)):
        print(f"{name:<22}{t:>10.2f}{t / t_ce:>14.3f}")
    print(f"cached-task overhead {t_cached / t_ce:.3f}x (target <= 1.10)")
    out = {
        "cached_vs_ce": round(t_cached / t_ce, 3),
        "live_teacher_vs_ce": round(t_live / t_ce, 3),
        "where": where,
    }
    if not args.no_views:
        views = view_modes(args, device)
        print(f"{'view (data + step)':<22}{'ms/step':>10}{'ratio to clean':>16}")
        for name in ("clean", "replay", "live"):
            print(f"{name:<22}{views[name]:>10.2f}{views[name] / views['clean']:>16.3f}")
        out.update({f"{k}_step_ms": round(v, 3) for k, v in views.items()})
        out["replay_vs_clean_step"] = round(views["replay"] / views["clean"], 3)
        out["live_vs_clean_step"] = round(views["live"] / views["clean"], 3)
    print(json.dumps(out))


def view_modes(args, device: torch.device) -> dict[str, float]:
    """ms per step (data pipeline + task step) with the clean, replayed and live teacher views."""
    from vlmkd.config import DataConfig
    from vlmkd.data import build_manifests
    from vlmkd.data.dataset import ManifestDataset, collate_skip
    from vlmkd.data.images import open_image
    from vlmkd.data.transforms import build_transform, preprocess_config
    from vlmkd.tasks.providers import ZeroShotLogits
    from vlmkd.tasks.rows import ReplayRows, StoreRows
    from vlmkd.teachers.domain import DomainTeacher
    from vlmkd.teachers.replay import view_seed
    from vlmkd.teachers.view import TeacherView
    from vlmkd.teachers.zero_shot import ZeroShotClassifier
    from vlmkd.utils.rng import seeded_call

    data_cfg = DataConfig(
        format="fashion_mnist", root=args.data_root, image_size=28, in_chans=1, augment="basic"
    )
    train = build_manifests(data_cfg)["train"]
    train = train.subset(np.arange(min(args.view_samples, len(train))))
    n, B, D, K = len(train), args.batch, args.text_dim, args.num_views
    C = train.num_classes
    counts = np.bincount(train.labels, minlength=C).tolist()
    tf = build_transform(data_cfg, train=True)
    torch.manual_seed(0)
    tower = create_student(args.tower, num_classes=C, in_chans=1, head="embedding", embed_dim=D)
    teacher = DomainTeacher(tower.eval().requires_grad_(False), None, data_cfg, 1 / 0.07, {"embed_dim": D})
    teacher = teacher.to(device)
    class_text = F.normalize(torch.randn(C, D), dim=-1)
    tmp = Path(tempfile.mkdtemp(prefix="vlmkd_views_"))
    gen = np.random.default_rng(0)
    np.save(tmp / "clean.npy", gen.standard_normal((n, D)).astype(np.float16))
    np.save(tmp / "replay.npy", gen.standard_normal((n, K, D)).astype(np.float16))
    # the stored views' parameters, drawn by the training transform as `vlmkd teach` draws them
    params = np.stack(
        [
            np.stack(
                [seeded_call(tf.draw, open_image(train, i, True), seed=view_seed(i, v))[1] for v in range(K)]
            )
            for i in range(n)
        ]
    )
    np.save(tmp / "params.npy", params.astype(np.int32))

    def task(provider):
        torch.manual_seed(0)
        terms = [
            LossSpec("cls", 1.0, build("balanced_softmax", class_counts=counts)),
            LossSpec("kd", 4.0, build("kd", temperature=2.0, logit_adjust=True, class_counts=counts)),
        ]
        student = create_student(args.model, num_classes=C, in_chans=1)
        return DistillTask(student, terms, providers={"teacher_logits": provider}).to(device)

    rows = {
        "clean": StoreRows(tmp / "clean.npy"),
        "replay": ReplayRows(tmp / "replay.npy", tmp / "params.npy"),
    }
    view = TeacherView(preprocess_config(data_cfg), teacher.preprocess_config())
    live = ZeroShotClassifier(teacher, view, class_text, 0.05).to(device)
    setups = {
        "clean": (
            task(ZeroShotLogits(rows["clean"], class_text.numpy(), 0.05)),
            {"teacher_logits": rows["clean"]},
        ),
        "replay": (
            task(ZeroShotLogits(rows["replay"], class_text.numpy(), 0.05)),
            {"teacher_logits": rows["replay"]},
        ),
        "live": (task(LiveTeacher("teacher_logits", live)), {}),
    }
    datasets = {}
    for name, (_, extras) in setups.items():
        datasets[name] = ManifestDataset(train, tf, extras)
        datasets[name].seed = 0
    order = np.random.default_rng(1).permutation(n)

    def run(name: str) -> float:
        t, ds = setups[name][0], datasets[name]
        opt = torch.optim.SGD(t.trainable_parameters(), lr=0.01, momentum=0.9)
        t.train()
        for s in range(args.steps + 3):
            if s == 3:  # warm-up steps excluded
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
            idx = order[(s * B) % (n - B) :][:B]
            batch = collate_skip([ds[int(i)] for i in idx])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = t(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / args.steps * 1000

    rounds = {name: [] for name in setups}
    for _ in range(args.rounds):  # interleaved: background load affects all three alike
        for name in setups:
            rounds[name].append(run(name))
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()
    return {name: statistics.median(v) for name, v in rounds.items()}


if __name__ == "__main__":
    main()
