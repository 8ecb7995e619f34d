"""Start-up: what a ``nerveseg`` process imports before it does its job (docs/performance.md,
"Start-up"). Each case runs the CLI in a fresh interpreter, as the ``nerveseg`` script does, and
reads ``sys.modules`` when it exits: ``--help`` (and every command's) loads none of the heavy
libraries; ``predict --engine torch`` with a custom architecture loads torch but not
segmentation_models_pytorch, timm or torchvision (seconds of imports it does not use);
``predict --engine onnxruntime`` on an exported ``.onnx`` never loads torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nerveseg_cli.cli._app import app

# Runs ``nerveseg ARGS`` (each argument list in turn; ``--help`` exits, so SystemExit is
# caught) and writes the top-level packages then loaded to the file named first.
DRIVER = """
import json, sys
from nerveseg_cli.cli import main
out, runs = sys.argv[1], json.loads(sys.argv[2])
for args in runs:
    sys.argv = ["nerveseg", *args]
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
with open(out, "w") as file:
    json.dump(sorted({name.split(".")[0] for name in sys.modules}), file)
"""

# Seconds of imports each, none needed to show help.
HEAVY = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "onnx", "onnxruntime",
         "matplotlib", "pandas", "scipy", "pydensecrf", "snakemake", "numpy", "cv2")
# What the torch engine does not need for a custom architecture (unet-plain).
NOT_FOR_TORCH = ("torchvision", "timm", "segmentation_models_pytorch", "onnx", "onnxruntime",
                 "matplotlib", "pandas", "scipy", "pydensecrf", "snakemake")
# What ONNX Runtime on an exported model does not need.
NOT_FOR_ONNX = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "onnx",
                "matplotlib", "pandas", "scipy", "pydensecrf", "snakemake")


def loaded_after(tmp_path: Path, *runs: list[str | Path]) -> set[str]:
    """The top-level packages in ``sys.modules`` after ``nerveseg`` ran with each list."""
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), json.dumps([[str(a) for a in r] for r in runs])],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return set(json.loads(out.read_text()))


def test_help_loads_no_heavy_library(tmp_path: Path) -> None:
    commands = sorted(c.name for c in app.registered_commands)
    assert "predict" in commands and "train" in commands
    loaded = loaded_after(tmp_path, ["--help"], ["--version"], ["workflow", "init", "--help"],
                          *([name, "--help"] for name in commands))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.fixture(scope="module")
def exported(hostile_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hostile base's unet-plain run, exported."""
    from nerveseg_cli.inference.export import export_run

    model = tmp_path_factory.mktemp("startup") / "run.onnx"
    export_run(hostile_base / "run", model)
    return model


def test_predict_with_torch_and_a_custom_architecture_skips_smp(hostile_base: Path,
                                                              tmp_path: Path) -> None:
    loaded = loaded_after(tmp_path, ["predict", hostile_base / "run", hostile_base / "data" /
                                     "test", "--out", tmp_path / "p", "--engine", "torch",
                                     "--device", "cpu", "--workers", "1"])
    assert "torch" in loaded
    assert not loaded & set(NOT_FOR_TORCH), sorted(loaded & set(NOT_FOR_TORCH))
    assert list((tmp_path / "p").glob("*.png"))


def test_predict_with_onnx_runtime_on_an_exported_model_never_imports_torch(
        hostile_base: Path, exported: Path, tmp_path: Path) -> None:
    loaded = loaded_after(tmp_path, ["predict", exported, hostile_base / "data" / "test",
                                     "--out", tmp_path / "p", "--engine", "onnxruntime",
                                     "--device", "cpu", "--workers", "1"])
    assert "onnxruntime" in loaded
    assert not loaded & set(NOT_FOR_ONNX), sorted(loaded & set(NOT_FOR_ONNX))
    assert list((tmp_path / "p").glob("*.png"))
