#!/usr/bin/env bash
# The CUDA benchmark (benchmarks/bench_cuda.py) in ONE device call of at most 8 minutes.
#
# Here, once: the wheel the device image lacks (segmentation-models-pytorch, pure Python, the
# version of .venv; benchmarks/_device.sh says why nothing else) into .carry/wheels, which git
# ignores and the device tool carries (the repo travels too: about 5 MB tracked; .carry holds
# under 1 MB for this script, plus usgra-seg's 31 MB if device_multiclass.sh prepared it):
#   bash benchmarks/device_cuda.sh --prepare
# There, the device tool's `run` with
#   command: bash benchmarks/device_cuda.sh     carry: [".carry"]     timeout_s: 480
# It installs the wheel with `pip install --no-index --no-deps --target /tmp/site`, exports
# PYTHONPATH=$PWD:/tmp/site, and runs `python3 benchmarks/bench_cuda.py --out $OUT` with a
# 450 s budget: each step is skipped when the budget cannot hold it, and a command still running
# at its end is killed, so the call ends in about 7.7 minutes (the install and the interpreter's
# start take about 10 s) and every row measured by then has come back.
# What lands in $OUT, each written as it happens: rows.jsonl (a JSON object per row, flushed as
# measured), progress.txt (each step's start and end), steps.log (every command's output),
# log.txt (this script's whole output), env.txt (nvidia-smi and the versions used); table.md
# (the markdown table) at the end.
# A second call within the 30 s the machine stays warm reruns some steps on the same synth set
# (/tmp/bench-cuda-work), e.g. ONLY=resume,ddp BUDGET=150 (timeout_s 180).
# Here, the rehearsal of this packaging on the CPU: bash benchmarks/rehearse_device.sh (runs this
# script with PY=<a venv of the image's packages only> SMOKE=1).
# Settings: PY [python3], SITE [/tmp/site], BUDGET [bench_cuda's: 450; smoke 1500],
# ONLY [every step; comma-separated, `python3 benchmarks/bench_cuda.py --list`], SMOKE [unset:
# CUDA; 1: tiny settings on the CPU], WORK [/tmp/bench-cuda-work].
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_device.sh

if [[ "${1:-}" == --prepare ]]; then
    carry_wheels
    du -sh .carry
    exit 0
fi

OUT="${OUT:?run on the device machine (OUT unset), or through benchmarks/rehearse_device.sh}"
PY="${PY:-python3}"
# (not in a pipeline: install_carried exports PYTHONPATH to this shell)
install_carried >"$OUT/log.txt" 2>&1 || { cat "$OUT/log.txt"; exit 2; }
cat "$OUT/log.txt"
describe_machine >"$OUT/env.txt" 2>&1
"$PY" benchmarks/bench_cuda.py --out "$OUT" ${SMOKE:+--smoke} ${BUDGET:+--budget-s "$BUDGET"} \
    ${ONLY:+--only "$ONLY"} ${WORK:+--work "$WORK"} 2>&1 | tee -a "$OUT/log.txt"
