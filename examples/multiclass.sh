#!/usr/bin/env bash
# A multi-class pipeline (nerve and vessel, as in ultrasound-guided regional anaesthesia), one
# plain `nerveseg` command per step: audit the label maps -> folds stratified on each class ->
# train every fold (one softmax model for all classes) -> out-of-fold predictions -> (CRF with
# all labels) -> per-class scores, and the threshold and min area of each class that maximise
# them -> out-of-fold label maps and a long-form Kaggle CSV -> (test predictions, ensembled,
# encoded with the chosen post-processing). Every `nerveseg` line can be run on its own.
#
#   DATA=../shared/data/usgra-seg SIZE=512x512 OUT=work-usg bash examples/multiclass.sh
#   SMOKE=1 bash examples/multiclass.sh         # tiny end-to-end check on synthetic data
#
# Settings (environment variables):
#   DATA     labelled images with label maps (pixel value = class index; palette PNGs are
#            fine): images/ + masks/ of the same names, or ID.png + ID_mask.png side by side
#   CLASSES  class names, background first                 [background,nerve,vessel]
#   TEST     optional folder of unlabelled images to predict and encode
#   IDS_FROM optional sample submission (long or joined form) fixing the CSV's rows
#   SIZE     the images' WxH: decode the out-of-fold CSV back to label maps (Kaggle's RLE
#            does not carry the size; skipped when unset)
#   OUT      folder for everything the pipeline writes       [nerveseg-multiclass]
#   RECIPE   training recipe, see `nerveseg recipes`         [seed003-sharp-unet-multiclass]
#   FOLDS    cross-validation folds                          [5]
#   EPOCHS   epochs per fold                                 [the recipe's]
#   DEVICE   auto, cpu, cuda or cuda:N                       [auto]
#   CRF      1: refine the maps with the dense CRF (all classes in one CRF) before scoring
#   TRAIN_ARGS  extra `nerveseg train` flags, e.g. "--batch-size 16 --amp bf16"
#   OVERWRITE   1: write into outputs that already exist
#   SMOKE    1: synthetic data (synth --classes 3) in OUT when DATA is unset, 64x48 inputs,
#            a narrow Sharp U-Net, 1 epoch, 2 folds, so the tests run the script
#
# Frames of usgra-seg carry no subject ids, so the folds group nothing; with subject ids in
# the file names, pass --subject-regex to dedupe and split (docs/split.md).
set -euo pipefail

SMOKE="${SMOKE:-0}"
OUT="${OUT:-nerveseg-multiclass}"
CLASSES="${CLASSES:-background,nerve,vessel}"
RECIPE="${RECIPE:-seed003-sharp-unet-multiclass}"
DEVICE="${DEVICE:-auto}"
CRF="${CRF:-0}"
TEST="${TEST:-}"
IDS_FROM="${IDS_FROM:-}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
if [[ "$SMOKE" == 1 ]]; then
    FOLDS="${FOLDS:-2}"
    EPOCHS="${EPOCHS:-1}"
    TRAIN_ARGS="${TRAIN_ARGS:---width 4 --size 64x48 --batch-size 4}"
else
    FOLDS="${FOLDS:-5}"
    EPOCHS="${EPOCHS:-}"
fi

common=()          # flags every command takes
[[ "${OVERWRITE:-0}" == 1 ]] && common+=(--overwrite)
train_flags=()     # train flags beyond the recipe
read -r -a train_flags <<< "$TRAIN_ARGS"
[[ -n "$EPOCHS" ]] && train_flags+=(--epochs "$EPOCHS")
SIZE="${SIZE:-}"

step() { printf '\n== %s\n' "$*" >&2; }

mkdir -p "$OUT"
if [[ -z "${DATA:-}" ]]; then
    if [[ "$SMOKE" != 1 ]]; then
        echo "error: set DATA to a folder of images and label maps (e.g." \
             "../shared/data/usgra-seg), or SMOKE=1 for a synthetic run" >&2
        exit 2
    fi
    step "synthetic data (nerve and vessel) in $OUT/synth"
    nerveseg synth "$OUT/synth" --classes 3 --subjects 4 --per-subject 6 --test 4 \
        --size 96x64 "${common[@]}"
    DATA="$OUT/synth/train"
    TEST="$OUT/synth/test"
    IDS_FROM="$OUT/synth/sample_submission.csv"
    CLASSES=background,nerve,vessel
    SIZE=96x64
fi
if [[ ! -d "$DATA" ]]; then
    echo "error: $DATA is not a folder (DATA holds the images and their label maps)" >&2
    exit 2
fi

step "audit: duplicate frames whose label maps disagree"
nerveseg dedupe "$DATA" --classes "$CLASSES" --out "$OUT/dedupe" "${common[@]}"

step "split: $FOLDS folds stratified on each class's presence"
nerveseg split "$OUT/dedupe/manifest.csv" --classes "$CLASSES" --folds "$FOLDS" \
    --out "$OUT/folds.csv" "${common[@]}"

runs=()
for (( k = 0; k < FOLDS; k++ )); do
    runs+=("$OUT/runs/fold$k")
    step "train fold $k of $FOLDS ($RECIPE, classes $CLASSES)"
    nerveseg train "$OUT/folds.csv" --fold "$k" --recipe "$RECIPE" --classes "$CLASSES" \
        "${train_flags[@]}" --device "$DEVICE" --out "$OUT/runs/fold$k" "${common[@]}"
done

step "out-of-fold predictions: a folder per class, each image by the fold that left it out"
nerveseg predict "${runs[@]}" "$OUT/folds.csv" --out-of-fold --device "$DEVICE" \
    --out "$OUT/oof/probs" "${common[@]}"
oof="$OUT/oof/probs"
if [[ "$CRF" == 1 ]]; then
    step "dense CRF over all classes on the out-of-fold maps"
    nerveseg crf "$oof" "$OUT/folds.csv" --out "$OUT/oof/crf" "${common[@]}"
    oof="$OUT/oof/crf"
fi

step "per-class scores; each class's threshold and min area -> postprocess.json"
nerveseg score "$oof" "$OUT/folds.csv" --by class --sweep-threshold 0.3:0.7:0.05 \
    --sweep-min-area 0:2000:250 --out "$OUT/score" "${common[@]}"

step "out-of-fold masks as a long-form CSV, with each class's chosen post-processing"
nerveseg rle-encode "$oof" --postprocess "$OUT/score/postprocess.json" \
    --out "$OUT/oof/masks.csv" "${common[@]}"
if [[ -n "$SIZE" ]]; then
    step "the CSV back to palette label maps (viewable, one class index per pixel)"
    nerveseg rle-decode "$OUT/oof/masks.csv" --classes "$CLASSES" --label-maps --size "$SIZE" \
        --out "$OUT/oof/label-maps" "${common[@]}"
fi

if [[ -n "$TEST" ]]; then
    test_maps=()
    for (( k = 0; k < FOLDS; k++ )); do
        test_maps+=("$OUT/test/fold$k")
        step "test predictions of fold $k"
        nerveseg predict "$OUT/runs/fold$k" "$TEST" --device "$DEVICE" \
            --out "$OUT/test/fold$k" "${common[@]}"
    done
    step "ensemble the folds' test maps, class by class"
    nerveseg ensemble "${test_maps[@]}" --out "$OUT/test/ensemble" "${common[@]}"
    test_probs="$OUT/test/ensemble"
    if [[ "$CRF" == 1 ]]; then
        nerveseg crf "$test_probs" "$TEST" --out "$OUT/test/crf" "${common[@]}"
        test_probs="$OUT/test/crf"
    fi
    ids=()
    [[ -n "$IDS_FROM" ]] && ids=(--ids-from "$IDS_FROM")
    step "submission (one row per image and class)"
    nerveseg rle-encode "$test_probs" --postprocess "$OUT/score/postprocess.json" \
        "${ids[@]}" --out "$OUT/submission.csv" "${common[@]}"
    echo "submission: $OUT/submission.csv" >&2
fi
echo "scores: $OUT/score/ (classes.csv, confusion.csv); out-of-fold masks: $OUT/oof/" >&2
