#!/usr/bin/env bash
# Issue 12's Dice protocol on a lent GPU, sized to ONE device call of at most 8 minutes:
# usgra-seg, 5 folds, 256 px, 20 epochs, seed 0 (15 trainings: one 3-class model against two
# binary models per fold), 8 at a time, then the table of benchmarks/bench_multiclass.py.
#
# Why this size: on the 2-core CPU a 128-px epoch takes about 28 s with one thread
# (docs/performance.md, "Several classes"), so 256 px (4x the pixels) about 110 s and the
# issue's 45 trainings (3 seeds) about 27 hours. An epoch here is 163 frames, 21 steps of batch
# 8, plus 41 frames validated: on an H100 well under a second of GPU time, so a 20-epoch
# training is about 30 s with its start (imports, cache), and 8 at a time on one GPU and 16
# cores run 15 trainings in two waves, estimated 2-4 minutes. The 45 trainings of 3 seeds
# (about 6 waves) would not fit with a margin: seeds 1 and 2 are a second call (SEEDS=0,1,2
# on the still-warm machine resumes from /tmp/mc-device's results.jsonl, training only what is
# missing), or a later session's.
#
# Here, once (copies usgra-seg and the wheel the device image lacks into .carry/, which git
# ignores and the device tool carries; 32 MB with the repo's 5 MB, under the 64 MiB a call
# carries):
#   bash benchmarks/device_multiclass.sh --prepare
# There, the device tool's `run` with
#   command: bash benchmarks/device_multiclass.sh     carry: [".carry"]     timeout_s: 480
# What lands in $OUT, as it happens: results.jsonl (one line per finished training, appended
# when it finishes), log.txt (this script's output: a line per finished training, then the
# table), env.txt (nvidia-smi and the versions used). LIMIT ends the trainings in time: a run
# cut by it loses only the trainings in flight, and a second call on the warm machine resumes.
# Settings: SEEDS [0], EPOCHS [20], SIZE [256], FOLDS [5], JOBS [8], LIMIT seconds of training
# [440], DEVICE [cuda], PY [python3], SITE [/tmp/site], WORK [/tmp/mc-device], CLASS_SET [none]
# (a 3-class train option, e.g. decoders=shared; binary runs are reused), USGRA [.carry/usgra-seg
# there; ../shared/data/usgra-seg for --prepare], SYNTH [unset; 1: a synthetic 3-class set of
# `nerveseg synth --classes` instead of usgra-seg, for a check without the data].
# Rehearsal here: RUN=multiclass bash benchmarks/rehearse_device.sh (PY=<a venv of the image's
# packages only> DEVICE=cpu EPOCHS=1 SIZE=64 FOLDS=2 JOBS=2, usgra-seg read where it lies).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_device.sh

if [[ "${1:-}" == --prepare ]]; then
    data="${USGRA:-../shared/data/usgra-seg}"
    [[ -d "$data/masks" ]] || { echo "error: no usgra-seg at $data (set USGRA)" >&2; exit 2; }
    rm -rf .carry/usgra-seg
    mkdir -p .carry
    cp -r "$data" .carry/usgra-seg
    carry_wheels
    du -sh .carry
    exit 0
fi

OUT="${OUT:?run on the device machine (OUT unset), or through benchmarks/rehearse_device.sh}"
PY="${PY:-python3}"
work="${WORK:-/tmp/mc-device}"
mkdir -p "$work"
# (not in a pipeline: install_carried exports PYTHONPATH to this shell)
install_carried >"$OUT/log.txt" 2>&1 || { cat "$OUT/log.txt"; exit 2; }
cat "$OUT/log.txt"
describe_machine >"$OUT/env.txt" 2>&1
if [[ -n "${SYNTH:-}" ]]; then
    data="$work/synth3"
    [[ -d "$data/train" ]] || "$PY" -m nerveseg_cli synth "$data" --classes \
        background,nerve,vessel --subjects 4 --per-subject 12 --test 0 --size 128x96 >/dev/null
    data="$data/train"
else
    data="${USGRA:-.carry/usgra-seg}"
    [[ -d "$data/masks" ]] \
        || { echo "error: no usgra-seg at $data (--prepare here; carry .carry)" >&2; exit 2; }
fi
# The benchmark resumes from $work/results.jsonl and appends each finished training to
# $OUT/results.jsonl too; the table is printed by a call that finds every run done.
set -o pipefail
timeout "${LIMIT:-440}" "$PY" benchmarks/bench_multiclass.py --only cv --folds "${FOLDS:-5}" \
    --size "${SIZE:-256}" --epochs "${EPOCHS:-20}" --seeds "${SEEDS:-0}" \
    --device "${DEVICE:-cuda}" ${CLASS_SET:+--set-classes "$CLASS_SET"} --data "$data" \
    --jobs "${JOBS:-8}" --work "$work" --results-out "$OUT/results.jsonl" 2>&1 \
    | tee -a "$OUT/log.txt"
