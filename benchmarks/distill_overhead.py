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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

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
        return create_student(args.model, C, args.chans, head, D if head == "both" else 0)

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
    teacher = create_student(args.teacher, C, args.chans).eval().requires_grad_(False)
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


if __name__ == "__main__":
    main()
