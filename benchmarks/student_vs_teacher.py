"""Students against the VLM image towers they replace: parameters, FLOPs, CPU latency and throughput, side by side.

    python benchmarks/student_vs_teacher.py            # batch 1 and 32, 224 px, all models (~3-5 min on 2 cores)
    python benchmarks/student_vs_teacher.py --quick    # fewer repetitions
    python benchmarks/student_vs_teacher.py --device cuda [--amp] [--channels-last]   # GPU latency (no ONNX part)

Students: timm resnet18, resnet50, mobilenetv3_large_100 (random weights, 1000-class head). Teachers: the image
towers of open_clip ViT-B-32 and ViT-L-14 (random weights: speed does not depend on them). Every model runs in the
same process, same threads, same input; ratios are teacher latency / student latency. Also: the ResNet-18 student
as ONNX (onnxruntime) against PyTorch eager. Goal: ResNet-18 >= 20x faster than ViT-L/14 at batch 32 on CPU.

On `--device cuda` the models and input live on the GPU and every timed call ends with torch.cuda.synchronize();
`--amp` runs them under bf16 autocast, `--channels-last` puts the CNN students (and their input) in channels_last.
FLOPs are always counted on CPU; the ONNX Runtime comparison runs on CPU only. The last line printed is one JSON
object with the device and the teacher/student speed-ups.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

STUDENTS = ["resnet18", "resnet50", "mobilenetv3_large_100"]
TEACHERS = ["ViT-B-32", "ViT-L-14"]


def build(name: str) -> torch.nn.Module:
    if name in TEACHERS:
        import open_clip

        return open_clip.create_model(name, pretrained=None).visual.eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def flops(model: torch.nn.Module, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    # grad enabled on purpose: under no_grad, nn.MultiheadAttention takes a fused fast path whose q/k/v and
    # output projections FlopCounterMode does not see (a third of a ViT's matmul FLOPs)
    with FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 3, size, size))
    return int(fc.get_total_flops())


def median_s(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_torch(
    model: torch.nn.Module,
    size: int,
    batch: int,
    runs: int,
    warmup: int,
    device: torch.device | None = None,
    amp: bool = False,
    channels_last: bool = False,
) -> float:
    device = device or torch.device("cpu")
    x = torch.randn(batch, 3, size, size)
    x = x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if device.type != "cuda":
        with torch.inference_mode():
            return median_s(lambda: model(x), runs, warmup)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            model(x)
        torch.cuda.synchronize(device)  # kernels run asynchronously: wait for them inside the timed call

    with torch.inference_mode():
        return median_s(step, runs, warmup)


def bench_onnx(model: torch.nn.Module, size: int, batches: list[int], runs: int) -> dict[int, float]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = str(Path(d) / "m.onnx")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, size, size),),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        out = {}
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
            out[b] = median_s(lambda x=x: sess.run(None, {"image": x}), runs, 1)
        return out


def fmt_count(n: float) -> str:
    for div, s in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{s}"
    return f"{n:.0f}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="fewer repetitions (1 timed run for ViT-L-14 at batch 32)"
    )
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, default=0, help="torch/onnxruntime CPU threads (default: torch's)")
    ap.add_argument("--students", nargs="+", default=STUDENTS)
    ap.add_argument("--teachers", nargs="+", default=TEACHERS)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the timed forwards run")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (--device cuda only)")
    ap.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last CNN students and input (--device cuda only)",
    )
    args = ap.parse_args(argv)
    prog = "student_vs_teacher.py"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"{prog}: error: --device cuda, but torch sees no CUDA device")
    if (args.amp or args.channels_last) and args.device != "cuda":
        sys.exit(f"{prog}: error: --amp and --channels-last need --device cuda")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if cuda:
        torch.backends.cudnn.benchmark = True
        dev_name = torch.cuda.get_device_name(device)
        where = (
            f"device cuda ({dev_name}), {'bf16 autocast' if args.amp else 'fp32'}"
            f" (matmul precision {torch.get_float32_matmul_precision()})"
            + (", channels_last students" if args.channels_last else "")
            + f", torch {torch.__version__}, CUDA {torch.version.cuda}"
        )
    else:
        dev_name = "cpu"
        where = (
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
            f"{platform.processor() or platform.machine()}"
        )
    print(f"# student_vs_teacher: {where}, {args.size} px, random weights, median wall-clock", flush=True)
    rows = {}
    for name in args.students + args.teachers:
        model = build(name)
        heavy = name == "ViT-L-14"
        rec = {
            "kind": "teacher" if name in args.teachers else "student",
            "params": sum(p.numel() for p in model.parameters()),
            "flops": flops(model, args.size),  # on CPU, before the model moves
        }
        cl = cuda and args.channels_last and rec["kind"] == "student"
        if cuda:
            model = model.to(device, memory_format=torch.channels_last) if cl else model.to(device)
        for b in args.batches:
            big = b > 8
            if cuda:  # the GPU is fast: the same repetitions for every model; warm-up covers cuDNN autotuning
                runs, warmup = (10, 3) if args.quick else (30, 5)
            else:
                runs = (
                    (1 if args.quick else 2)
                    if heavy and big
                    else (2 if args.quick else 3)
                    if heavy or (big and name in args.teachers)
                    else (3 if args.quick else 10)
                )
                warmup = 0 if heavy and big and args.quick else 1
            rec[f"b{b}_s"] = bench_torch(model, args.size, b, runs, warmup, device, args.amp, cl)
        rows[name] = rec
        print(
            f"  measured {name}: " + ", ".join(f"b{b} {1000 * rec[f'b{b}_s']:.1f} ms" for b in args.batches),
            flush=True,
        )
        del model

    cols = [f"b{b}" for b in args.batches]
    head = (
        f"{'model':<24}{'kind':<9}{'params':>9}{'GFLOPs':>9}"
        + "".join(f"{c + ' ms':>12}" for c in cols)
        + "".join(f"{c + ' img/s':>13}" for c in cols)
    )
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in rows.items():
        print(
            f"{name:<24}{r['kind']:<9}{fmt_count(r['params']):>9}{r['flops'] / 1e9:>9.2f}"
            + "".join(f"{1000 * r[c + '_s']:>12.1f}" for c in cols)
            + "".join(f"{int(c[1:]) / r[c + '_s']:>13.1f}" for c in cols)
        )

    print("\nspeed-up = teacher latency / student latency (higher: the student is faster)")
    ratio_head = (
        f"{'student':<24}{'teacher':<12}"
        + "".join(f"{c + ' speed-up':>14}" for c in cols)
        + f"{'FLOPs ratio':>13}{'params ratio':>14}"
    )
    print(ratio_head + "\n" + "-" * len(ratio_head))
    ratios = {}
    for s in args.students:
        for t in args.teachers:
            rr = {c: rows[t][c + "_s"] / rows[s][c + "_s"] for c in cols}
            ratios[f"{t}/{s}"] = rr
            print(
                f"{s:<24}{t:<12}"
                + "".join(f"{rr[c]:>13.1f}x" for c in cols)
                + f"{rows[t]['flops'] / rows[s]['flops']:>12.1f}x{rows[t]['params'] / rows[s]['params']:>13.1f}x"
            )

    result = {"rows": rows, "ratios": ratios, "threads": torch.get_num_threads(), "size": args.size}
    result.update(device=dev_name, amp=args.amp, channels_last=args.channels_last)
    if "resnet18" in rows and cuda:
        print("\n(ONNX Runtime comparison skipped: it runs on CPU only, use --device cpu)")
    if "resnet18" in rows and not cuda:
        ort_s = bench_onnx(build("resnet18"), args.size, args.batches, 3 if args.quick else 10)
        print("\nresnet18: ONNX Runtime vs PyTorch eager (speed-up = eager latency / onnxruntime latency)")
        for b in args.batches:
            eager = rows["resnet18"][f"b{b}_s"]
            print(
                f"  batch {b:>3}: eager {1000 * eager:8.1f} ms   onnxruntime {1000 * ort_s[b]:8.1f} ms   "
                f"speed-up {eager / ort_s[b]:.2f}x"
            )
        result["onnx_resnet18"] = {f"b{b}_s": v for b, v in ort_s.items()}
    key, col = "ViT-L-14/resnet18", f"b{max(args.batches)}"
    if key in ratios:
        v = ratios[key][col]
        print(
            f"\ngoal: resnet18 >= 20x faster than ViT-L-14 at batch {max(args.batches)} ({args.device}): "
            f"{v:.1f}x -> {'MET' if v >= 20 else 'NOT MET'}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    summary = {"device": dev_name, "amp": args.amp, "channels_last": args.channels_last}
    for pair, rr in ratios.items():
        t, s = pair.split("/")
        for c, v in rr.items():
            summary[f"speedup_{t.replace('-', '').lower()}_{s}_{c}"] = round(v, 2)
    for name, r in rows.items():
        summary[f"{name}_b{max(args.batches)}_img_s"] = round(
            max(args.batches) / r[f"b{max(args.batches)}_s"], 1
        )
    print(json.dumps(summary))
    return result


if __name__ == "__main__":
    main()
