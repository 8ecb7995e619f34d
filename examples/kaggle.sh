#!/usr/bin/env bash
# The Kaggle Ultrasound Nerve Segmentation pipeline, one plain `nerveseg` command per step:
# audit -> subject-grouped folds -> train every fold -> out-of-fold predictions -> choose the
# post-processing on them -> predict the test set with every fold -> ensemble -> (CRF) ->
# submission. Every line that starts with `nerveseg` can be copied and run on its own.
#
#   DATA=~/kaggle/ultrasound-nerve-segmentation OUT=work bash examples/kaggle.sh
#   SMOKE=1 bash examples/kaggle.sh          # tiny end-to-end check on synthetic data
#
# Settings (environment variables):
#   DATA     the Kaggle folder: train/ (ID.tif and ID_mask.tif), test/, sample_submission.csv
#   OUT      folder for everything the pipeline writes            [nerveseg-kaggle]
#   RECIPE   training recipe, see `nerveseg recipes`                [nerve-default]
#   FOLDS    cross-validation folds                                 [5]
#   EPOCHS   epochs per fold                                        [the recipe's]
#   DEVICE   auto, cpu, cuda or cuda:N                              [auto]
#   CRF      1: refine the out-of-fold and test maps with the dense CRF before scoring
#   TRAIN_ARGS  extra `nerveseg train` flags, e.g. "--batch-size 16 --amp bf16"
#   OVERWRITE   1: write into outputs that already exist
#   SMOKE    1: shrink everything (synthetic data made in OUT when DATA is unset, 64x64
#            inputs, resnet18 without ImageNet weights, 1 epoch) so the tests run the script
#
# The steps run one after the other, as a reader would type them. To train the folds in
# parallel (one per GPU, or on a SLURM cluster), rerun only what changed, and continue after an
# interruption by running the same command again, use the workflow: `nerveseg workflow init`
# (docs/workflow.md). To train one fold on several GPUs, use torchrun (docs/faq.md). An
# interrupted fold continues with `nerveseg train --resume OUT/runs/foldK`.
set -euo pipefail

SMOKE="${SMOKE:-0}"
OUT="${OUT:-nerveseg-kaggle}"
RECIPE="${RECIPE:-nerve-default}"
DEVICE="${DEVICE:-auto}"
CRF="${CRF:-0}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
if [[ "$SMOKE" == 1 ]]; then
    FOLDS="${FOLDS:-2}"
    EPOCHS="${EPOCHS:-1}"
    TRAIN_ARGS="${TRAIN_ARGS:---encoder resnet18 --encoder-weights none --size 64x64 --batch-size 4}"
else
    FOLDS="${FOLDS:-5}"
    EPOCHS="${EPOCHS:-}"
fi

common=()          # flags every command takes
[[ "${OVERWRITE:-0}" == 1 ]] && common+=(--overwrite)
train_flags=()     # train flags beyond the recipe
read -r -a train_flags <<< "$TRAIN_ARGS"
[[ -n "$EPOCHS" ]] && train_flags+=(--epochs "$EPOCHS")

step() { printf '\n== %s\n' "$*" >&2; }

mkdir -p "$OUT"
if [[ -z "${DATA:-}" ]]; then
    if [[ "$SMOKE" != 1 ]]; then
        echo "error: set DATA to the Kaggle folder (train/, test/, sample_submission.csv)," \
             "or SMOKE=1 for a synthetic run" >&2
        exit 2
    fi
    DATA="$OUT/synth"
    step "synthetic data in $DATA"
    nerveseg synth "$DATA" --subjects 4 --per-subject 8 --test 4 --size 96x64 "${common[@]}"
fi
for needed in train test sample_submission.csv; do
    if [[ ! -e "$DATA/$needed" ]]; then
        echo "error: $DATA/$needed not found (DATA must be the Kaggle folder)" >&2
        exit 2
    fi
done

step "audit: drop duplicate frames whose masks disagree"
nerveseg dedupe "$DATA/train" --out "$OUT/dedupe" "${common[@]}"

step "split: $FOLDS folds grouped by subject"
nerveseg split "$OUT/dedupe/manifest.csv" --folds "$FOLDS" --out "$OUT/folds.csv" "${common[@]}"

runs=()
for (( k = 0; k < FOLDS; k++ )); do
    runs+=("$OUT/runs/fold$k")
    step "train fold $k of $FOLDS ($RECIPE)"
    nerveseg train "$OUT/folds.csv" --fold "$k" --recipe "$RECIPE" \
        "${train_flags[@]}" --device "$DEVICE" --out "$OUT/runs/fold$k" "${common[@]}"
done

step "out-of-fold predictions: each training image by the fold that did not train on it"
nerveseg predict "${runs[@]}" "$OUT/folds.csv" --out-of-fold --device "$DEVICE" \
    --out "$OUT/oof/probs" "${common[@]}"

test_maps=()
for (( k = 0; k < FOLDS; k++ )); do
    test_maps+=("$OUT/test/fold$k")
    step "test predictions of fold $k"
    nerveseg predict "$OUT/runs/fold$k" "$DATA/test" --device "$DEVICE" \
        --out "$OUT/test/fold$k" "${common[@]}"
done

step "ensemble the folds' test maps (ASME)"
nerveseg ensemble "${test_maps[@]}" --method asme --out "$OUT/test/ensemble" "${common[@]}"

oof="$OUT/oof/probs"
test_probs="$OUT/test/ensemble"
if [[ "$CRF" == 1 ]]; then
    step "dense CRF on the out-of-fold and the test maps"
    nerveseg crf "$OUT/oof/probs" "$OUT/folds.csv" --out "$OUT/oof/crf" "${common[@]}"
    nerveseg crf "$OUT/test/ensemble" "$DATA/test" --out "$OUT/test/crf" "${common[@]}"
    oof="$OUT/oof/crf"
    test_probs="$OUT/test/crf"
fi

step "out-of-fold score; the threshold and min area that maximise it -> postprocess.json"
nerveseg score "$oof" "$OUT/folds.csv" --by subject \
    --sweep-threshold 0.3:0.7:0.05 --sweep-min-area 0:5000:250 --out "$OUT/score" "${common[@]}"

step "submission"
nerveseg rle-encode "$test_probs" --postprocess "$OUT/score/postprocess.json" \
    --ids-from "$DATA/sample_submission.csv" --out "$OUT/submission.csv" "${common[@]}"

echo "submission: $OUT/submission.csv (out-of-fold scores in $OUT/score/)" >&2
