# shellcheck shell=bash
# Sourced by device_cuda.sh and device_multiclass.sh: the wheels a device call carries, and
# their install there. Not a script of its own.
#
# The device image (/work/.library/device/KINDS.md: python3 3.12, torch 2.11 cu130, typer,
# rich, numpy, pandas, scipy, opencv-python-headless, safetensors, matplotlib, onnx,
# onnxruntime (CPU), timm, huggingface-hub, torchvision, pillow, tqdm, pyyaml) lacks one
# package that `python -m nerveseg_cli train/predict/bench/export` imports:
# segmentation-models-pytorch (pure Python: one wheel for every platform). pydensecrf2, also
# missing there, is imported only by `nerveseg crf`, which no device script runs. nerveseg
# itself is not installed there: the repo goes on PYTHONPATH.

CARRY_WHEELS=.carry/wheels
# pip download's target: the image's interpreter (manylinux x86-64, CPython 3.12)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64)

# Here: the wheels into .carry/wheels (smp at the version of .venv), replacing older ones.
carry_wheels() {
    local smp
    smp="$(.venv/bin/python -c 'import importlib.metadata as m
print(m.version("segmentation-models-pytorch"))')"
    mkdir -p "$CARRY_WHEELS"
    rm -f "$CARRY_WHEELS"/segmentation_models_pytorch-*.whl
    .venv/bin/python -m pip download -q --no-deps "${TARGET[@]}" -d "$CARRY_WHEELS" \
        "segmentation-models-pytorch==$smp"
    ls -l "$CARRY_WHEELS"
}

# There: install the carried wheels into $SITE (default /tmp/site) with $PY's pip, no index and
# no dependencies, and put the repo and $SITE on PYTHONPATH (exported).
install_carried() {
    local site="${SITE:-/tmp/site}"
    compgen -G "$CARRY_WHEELS/*.whl" >/dev/null \
        || { echo "error: no wheels in $CARRY_WHEELS (run --prepare here; carry .carry)" >&2
             return 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$CARRY_WHEELS"/*.whl || return
    export PYTHONPATH="$PWD:$site" PYTHONUNBUFFERED=1 NO_COLOR=1
    "$PY" -c 'import nerveseg_cli, segmentation_models_pytorch, torch
print("nerveseg", nerveseg_cli.__version__, "from", nerveseg_cli.__path__[0])
print("smp", segmentation_models_pytorch.__version__, "torch", torch.__version__,
      "cuda", torch.cuda.is_available())'
}

# There: what ran, for env.txt.
describe_machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        2>/dev/null || echo "no GPU (nvidia-smi absent or failed)"
    "$PY" --version
    local names='torch|torchvision|numpy|onnx|onnxruntime[-a-z]*|timm|huggingface.hub|safetensors'
    names+='|segmentation.models.pytorch|opencv[-a-z]*|pandas|typer|rich'
    "$PY" -m pip list 2>/dev/null | grep -i -E "^($names) " || true
}
