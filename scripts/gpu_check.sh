#!/usr/bin/env bash
# One-shot GPU check for the device machine (no network there), from the repository root:
#
#     bash scripts/gpu_check.sh            # with $OUT set (logs land there; default /tmp/gpu_check_out)
#
# Needs open_clip for the teacher towers: carried as wheels in .whl/ (open_clip_torch, ftfy, wcwidth), made on a
# machine with network by `pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl
# open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 webdataset==1.0.2 braceexpand==0.1.7` (all pure Python;
# webdataset for the plain loop of train_throughput.py) and installed
# with --no-index into /tmp/site. vlmkd itself runs from src/ via PYTHONPATH (the tests call `python -m vlmkd`,
# no console script). Steps, each under `timeout`, each run even if an earlier one failed:
#   1. pytest -m gpu tests/gpu                                   -> pytest_gpu.log
#   2. benchmarks/train_throughput.py (issue 20: vlmkd train vs a plain timm + webdataset loop, ResNet-50
#      224 px bf16 + channels_last from shards; goal vlmkd_vs_plain >= 0.95) -> train_throughput.log
#   3. (if time is left) benchmarks/student_vs_teacher.py --device cuda --amp -> svt_amp.log, svt_cuda.json
#   4. (if time is left) benchmarks/distill_overhead.py --device cuda (fp32, bf16; resnet18 at 224 px)
#                                                                -> distill_overhead.log
#   5. (if time is left) student_vs_teacher.py --device cuda, fp32 -> svt_fp32.log, svt_cuda_fp32.json
#   6. (if time is left) --amp --channels-last, appended to svt_amp.log
# At most 9 files under $OUT: env.log, the logs above, summary.txt. Expected ~5 min on an H100; worst case ~570 s.
set -uo pipefail

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# Worst case (every step hitting its timeout) stays under ~570 s: pytest and train_throughput always run (<= 150 +
# 150 s); the rest start only while the elapsed time is below their threshold (latest start 480 s + 90 s).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLMKD_NO_PROGRESS=1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LOG TIMEOUT CMD...: runs CMD with a timeout, appends its output to LOG, records rc and seconds
step() {
    local name=$1 log=$2 limit=$3
    shift 3
    local t0=$SECONDS
    echo "=== $name: $*" | tee -a "$log"
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    note "$(printf '%-28s rc=%-4s %4ss  (%s)' "$name" "$rc" "$((SECONDS - t0))" "$(basename "$log")")"
    return 0
}

# maybe BEFORE NAME LOG TIMEOUT CMD...: step, but only if fewer than BEFORE seconds have passed
maybe() {
    local before=$1
    shift
    if [ "$SECONDS" -lt "$before" ]; then
        step "$@"
    else
        note "$(printf '%-28s skipped (%ss elapsed >= %ss)' "$1" "$SECONDS" "$before")"
    fi
}

{
    echo "=== environment"
    date -u
    nvidia-smi -L || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    command -v "$PY"
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())'
    nproc
} 2>&1 | tee "$OUT/env.log"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tee -a "$OUT/env.log"; then
        export PYTHONPATH=/tmp/site
        note "wheels: installed $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
    else
        note "wheels: pip install FAILED (teacher towers will be missing)"
    fi
else
    note "wheels: no .whl/ folder (open_clip teachers will be missing unless installed)"
fi
# vlmkd from the checkout, no install: the tests' subprocesses use `python -m vlmkd` with PYTHONPATH=src
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import vlmkd, vlmkd.cli; print("vlmkd", vlmkd.__file__)' 2>&1 | tee -a "$OUT/env.log"
"$PY" -c 'import open_clip, timm; print("open_clip", open_clip.__version__, "timm", timm.__version__)' 2>&1 |
    tee -a "$OUT/env.log" || true
note "python -m vlmkd --help rc=$("$PY" -m vlmkd --help >/dev/null 2>&1; echo $?)"

step "pytest -m gpu" "$OUT/pytest_gpu.log" 150 \
    "$PY" -m pytest -m gpu tests/gpu -p no:cacheprovider -rfEs --timeout 120

step "train_throughput r50 bf16" "$OUT/train_throughput.log" 150 \
    "$PY" benchmarks/train_throughput.py --device cuda --n 6000 --batch 128 --steps 40 --warmup 8 \
    --workers "$(($(nproc) > 3 ? $(nproc) - 2 : 1))"

maybe 300 "svt cuda bf16" "$OUT/svt_amp.log" 150 \
    "$PY" benchmarks/student_vs_teacher.py --device cuda --amp --json "$OUT/svt_cuda.json"

D="$OUT/distill_overhead.log"
maybe 420 "distill cnn_small fp32" "$D" 45 "$PY" benchmarks/distill_overhead.py --device cuda
maybe 450 "distill cnn_small bf16" "$D" 45 "$PY" benchmarks/distill_overhead.py --device cuda --amp
maybe 450 "distill resnet18 224 bf16+cl" "$D" 75 "$PY" benchmarks/distill_overhead.py --device cuda --amp \
    --channels-last --model resnet18 --teacher resnet50 --batch 256 --size 224 --chans 3 --classes 100 --steps 20

maybe 450 "svt cuda fp32" "$OUT/svt_fp32.log" 120 \
    "$PY" benchmarks/student_vs_teacher.py --device cuda --json "$OUT/svt_cuda_fp32.json"
maybe 480 "svt cuda bf16+channels_last" "$OUT/svt_amp.log" 90 "$PY" benchmarks/student_vs_teacher.py \
    --device cuda --amp --channels-last --quick --students resnet18 resnet50 mobilenetv3_large_100 --teachers ViT-L-14

{
    echo
    echo "=== summary (total ${SECONDS}s)"
    cat "$SUMMARY"
    echo "--- pytest"
    tail -n 1 "$OUT/pytest_gpu.log" 2>/dev/null
    echo "--- train_throughput"
    grep -h '^{"device"' "$OUT/train_throughput.log" 2>/dev/null
    echo "--- distill_overhead"
    grep -E "^(student |cached-task overhead)" "$D" 2>/dev/null
    echo "--- student_vs_teacher (JSON lines)"
    grep -h '^{"device"' "$OUT/svt_amp.log" "$OUT/svt_fp32.log" 2>/dev/null
    grep -h '^goal' "$OUT/svt_amp.log" "$OUT/svt_fp32.log" 2>/dev/null
} | tee "$OUT/summary.tmp"
mv "$OUT/summary.tmp" "$SUMMARY"
