#!/usr/bin/env bash
# Issue 12's Dice protocol on a lent GPU, in one device call: usgra-seg, 5 folds, 256 px,
# 20 epochs, seeds 0,1,2 (45 trainings: one 3-class model against two binary models per fold
# and seed), then the table of benchmarks/bench_multiclass.py. On the 2-core CPU this is about
# 27 hours; on one H200, 8 trainings at a time, minutes.
#
# Here, once (copies the data and the one wheel the device image lacks into .carry/, which
# git ignores and the device tool carries):
#   bash benchmarks/device_multiclass.sh --prepare
# There (device tool: carry [".carry"], timeout_s 600):
#   bash benchmarks/device_multiclass.sh
# Settings: SEEDS [0,1,2], EPOCHS [20], SIZE [256], FOLDS [5], JOBS [8], LIMIT seconds of
# training [520], DEVICE [cuda], PY [python3] (a check here: PY=.venv/bin/python DEVICE=cpu),
# CLASS_SET [none] (a 3-class train option, e.g. decoders=shared; binary runs are reused).
# What it left in $OUT: results.jsonl (one line per finished training) and log.txt. A second
# call while the machine is still warm resumes from /tmp/mc-device; a cold one starts over.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == --prepare ]]; then
    data="${USGRA:-../shared/data/usgra-seg}"
    [[ -d "$data/masks" ]] || { echo "error: no usgra-seg at $data (set USGRA)" >&2; exit 2; }
    rm -rf .carry && mkdir -p .carry/wheels
    cp -r "$data" .carry/usgra-seg
    # smp is the only package of a training run missing from the device image (KINDS.md);
    # pure Python, so one wheel serves every platform.
    smp_version="$(.venv/bin/python -c 'import importlib.metadata as m;
print(m.version("segmentation-models-pytorch"))')"
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .carry/wheels \
        "segmentation-models-pytorch==$smp_version"
    du -sh .carry
    exit 0
fi

OUT="${OUT:?run on the device machine (OUT unset)}"
[[ -d .carry/usgra-seg ]] || { echo "error: .carry/ not carried (run --prepare here)" >&2; exit 2; }
PY="${PY:-python3}"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .carry/wheels/*.whl
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 NERVESEG_USGRA_DATA="$PWD/.carry/usgra-seg"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"; } \
    | tee "$OUT/log.txt"
work=/tmp/mc-device
mkdir -p "$work"
save() { cp "$work/results.jsonl" "$OUT/" 2>/dev/null || true; }
trap save EXIT
# The benchmark resumes from results.jsonl, so a run cut by LIMIT loses only the trainings
# in flight; the table is printed by a last call that finds every run done.
timeout "${LIMIT:-520}" "$PY" benchmarks/bench_multiclass.py --only cv --folds "${FOLDS:-5}" \
    --size "${SIZE:-256}" --epochs "${EPOCHS:-20}" --seeds "${SEEDS:-0,1,2}" \
    --device "${DEVICE:-cuda}" ${CLASS_SET:+--set-classes "$CLASS_SET"} \
    --jobs "${JOBS:-8}" --work "$work" 2>&1 | tee -a "$OUT/log.txt"
