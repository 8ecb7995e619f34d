#!/usr/bin/env bash
# The rehearsal, here on the CPU, of a device call of device_cuda.sh and/or device_multiclass.sh
# (RUN=cuda|multiclass|both): the same packaging as on the device machine, so that a lent GPU's
# minutes produce figures the first time.
#
# 1. A venv ($VENV, built once, about 2 minutes and 6 GB from this machine's disk and pip
#    cache) holding only packages of the device image (KINDS.md) that nerveseg needs, at the
#    image's versions where this machine has them: NOT nerveseg, NOT segmentation-models-pytorch.
#    Deviations, all forced by this machine: Python 3.11, not 3.12 (python3.12 exists under
#    pyenv, but torch lies on this disk for 3.11 only, and a 3.12 build would be a download of
#    several GB); torch 2.14.1 + torchvision 0.29.1 (the image: 2.11.0 + 0.26.0, not installable
#    for 3.11 from this disk); numpy 2.4.6 (the image: 2.5.2, which has no 3.11 wheel).
# 2. The wheels of .carry/wheels (device_cuda.sh --prepare, run here when they are missing).
# 3. device_cuda.sh as the device runs it, with PY=$VENV/bin/python SMOKE=1, a fresh --target
#    folder, $OUT and work folder: it installs the wheels with pip --target, puts the repo on
#    PYTHONPATH and runs every step of bench_cuda.py at tiny sizes on the CPU.
#    Then it prints the wall time, rows.jsonl and table.md.
# 4. With RUN=multiclass or both: device_multiclass.sh the same way, with DEVICE=cpu EPOCHS=1
#    SIZE=64 FOLDS=2 JOBS=2, on usgra-seg read where it lies (USGRA), or on a synthetic 3-class
#    set with SYNTH=1; its $OUT is $OUT-multiclass.
#
# Run: bash benchmarks/rehearse_device.sh   (3 to 5 minutes on the 2-core machine, plus 2 to
# build the venv the first time; RUN=both 40 s more)
# Settings: RUN [cuda], VENV [/tmp/nerveseg-image-venv], PYTHON [python3.11] (builds the venv),
# OUT [/tmp/rehearsal-out], BUDGET [1500], ONLY [every step], SYNTH [unset], USGRA
# [../shared/data/usgra-seg].
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-/tmp/nerveseg-image-venv}"
OUT="${OUT:-/tmp/rehearsal-out}"
# The image's packages that nerveseg (and smp, timm) import, pinned to the image's versions
# where this machine has them (KINDS.md's pip list); the rest at pip's choice.
IMAGE_PACKAGES=(torch==2.14.1 torchvision==0.29.1 numpy==2.4.6 huggingface-hub==1.33.0
                onnx==1.23.1 onnxruntime==1.30.0 safetensors==0.8.0 timm typer rich pandas
                scipy opencv-python-headless matplotlib pillow tqdm pyyaml)

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "building $VENV (the device image's packages only)"
    "${PYTHON:-python3.11}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "${IMAGE_PACKAGES[@]}"
fi
# The venv must lack what the device image lacks (checked outside the repo, whose folder
# would otherwise provide nerveseg_cli).
(cd / && "$VENV/bin/python" - <<'EOF'
import importlib.util
import sys

present = [n for n in ("nerveseg_cli", "segmentation_models_pytorch", "pydensecrf")
           if importlib.util.find_spec(n)]
if present:
    sys.exit(f"error: the rehearsal venv holds {present}, which the device image lacks")
EOF
)
compgen -G ".carry/wheels/*.whl" >/dev/null || bash benchmarks/device_cuda.sh --prepare
du -sh .carry

rehearse() {  # OUT-folder, then the command line
    local out="$1"
    shift
    rm -rf "$out" /tmp/rehearsal-site /tmp/rehearsal-work
    mkdir -p "$out"
    local started=$SECONDS
    env -u VIRTUAL_ENV -u PYTHONPATH OUT="$out" PY="$VENV/bin/python" SITE=/tmp/rehearsal-site \
        WORK=/tmp/rehearsal-work "$@"
    echo "rehearsal wall time: $((SECONDS - started)) s ($*)"
    ls -l "$out"
}

RUN="${RUN:-cuda}"
if [[ "$RUN" == cuda || "$RUN" == both ]]; then
    rehearse "$OUT" SMOKE=1 BUDGET="${BUDGET:-1500}" ONLY="${ONLY:-}" \
        bash benchmarks/device_cuda.sh
    echo "--- $OUT/rows.jsonl"
    cat "$OUT/rows.jsonl"
    echo "--- $OUT/table.md"
    cat "$OUT/table.md"
fi
if [[ "$RUN" == multiclass || "$RUN" == both ]]; then
    rehearse "$OUT-multiclass" DEVICE=cpu EPOCHS=1 SIZE=64 FOLDS=2 JOBS=2 SYNTH="${SYNTH:-}" \
        USGRA="${USGRA:-../shared/data/usgra-seg}" bash benchmarks/device_multiclass.sh
    echo "--- $OUT-multiclass/results.jsonl"
    cat "$OUT-multiclass/results.jsonl"
fi
