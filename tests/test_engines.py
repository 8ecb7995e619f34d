"""``predict --engine onnxruntime`` (nerveseg_cli/engines.py): through the CLI, the maps of an
exported model and of a run folder exported on the fly equal torch's within one grey level, with
flip TTA, two runs merged by ASME, shares (``--part``) and ``--resume``; the options that apply
to torch only are refused; and the path from an ``.onnx`` file to the maps never imports torch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from nerveseg_cli.export import export_run
from nerveseg_cli.runs import BEST, load_run, save_weights
from tests.conftest import assert_one_line_error
from tests.hostile import assert_refused

CPU = ["--device", "cpu", "--workers", "1"]


@pytest.fixture(scope="module")
def models(hostile_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``run`` (the hostile base's), ``run2`` and ``run3`` (its weights perturbed: models that
    disagree, for ASME), their exports ``run.onnx`` ..., and ``images``."""
    root = tmp_path_factory.mktemp("engines")
    found = {"run": hostile_base / "run", "images": hostile_base / "data" / "test"}
    for seed, name in ((1, "run2"), (2, "run3")):
        shutil.copytree(hostile_base / "run", root / name)
        _, model = load_run(root / name)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.3 * seed * torch.randn(parameter.shape, generator=generator))
        save_weights(model, root / name / BEST)
        found[name] = root / name
    for name in ("run", "run2", "run3"):
        found[f"{name}.onnx"] = root / f"{name}.onnx"
        export_run(found[name], found[f"{name}.onnx"])
    return found


def read_maps(folder: Path) -> dict[str, np.ndarray]:
    maps = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in folder.glob("*.png")}
    assert maps, f"no maps in {folder}"
    return maps


def assert_within_one_grey_level(actual: Path, expected: Path) -> None:
    got, wanted = read_maps(actual), read_maps(expected)
    assert got.keys() == wanted.keys()
    for key in wanted:
        difference = np.abs(got[key].astype(int) - wanted[key].astype(int))
        assert difference.max() <= 1, (key, difference.max())


def predict(cli, models: dict[str, Path], runs: list[str], out: Path, *options: str) -> Path:
    result = cli("predict", *(models[r] for r in runs), models["images"], "--out", out,
                 *CPU, *options)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return out


@pytest.mark.parametrize("options", [[], ["--tta", "flips"]], ids=["plain", "tta-flips"])
@pytest.mark.parametrize("source", ["run2.onnx", "run2"], ids=["exported", "run-folder"])
def test_onnx_runtime_maps_equal_torch_maps(cli, models: dict[str, Path], tmp_path: Path,
                                            source: str, options: list[str]) -> None:
    """run2's maps span most grey levels (run's, one epoch at width 2, are nearly flat)."""
    expected = predict(cli, models, ["run2"], tmp_path / "torch", *options)
    actual = predict(cli, models, [source], tmp_path / "ort", "--engine", "onnxruntime",
                     *options)
    assert_within_one_grey_level(actual, expected)


def test_asme_over_three_models_is_the_same_with_onnx_runtime(cli, models: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """Exported models and a run folder exported on the fly, merged by ASME (with two models
    ASME's weights are always equal: three that disagree make it differ from the mean)."""
    asme = ["--merge", "asme", "--tta", "hflip"]
    expected = predict(cli, models, ["run", "run2", "run3"], tmp_path / "torch", *asme)
    actual = predict(cli, models, ["run.onnx", "run2", "run3.onnx"], tmp_path / "ort",
                     "--engine", "onnxruntime", *asme)
    assert_within_one_grey_level(actual, expected)
    mean = predict(cli, models, ["run.onnx", "run2.onnx", "run3.onnx"], tmp_path / "mean",
                   "--engine", "onnxruntime", "--tta", "hflip")
    differences = [np.abs(a.astype(int) - b.astype(int)).max() for a, b in
                   zip(read_maps(mean).values(), read_maps(actual).values(), strict=True)]
    assert max(differences) > 1


def test_two_parts_fill_one_folder_as_one_run(cli, models: dict[str, Path],
                                              tmp_path: Path) -> None:
    expected = predict(cli, models, ["run2"], tmp_path / "torch")
    out = tmp_path / "ort"
    ort = ["--engine", "onnxruntime", "--resume"]
    predict(cli, models, ["run2.onnx"], out, *ort, "--part", "1/2")
    first = set(read_maps(out))
    assert 0 < len(first) < len(read_maps(expected))
    predict(cli, models, ["run2.onnx"], out, *ort, "--part", "2/2")
    assert_within_one_grey_level(out, expected)


def test_resume_writes_only_the_missing_maps(cli, models: dict[str, Path],
                                             tmp_path: Path) -> None:
    expected = predict(cli, models, ["run2"], tmp_path / "torch")
    out = predict(cli, models, ["run2.onnx"], tmp_path / "ort", "--engine", "onnxruntime")
    removed = sorted(out.glob("*.png"))[:2]
    kept = sorted(out.glob("*.png"))[2:]
    for path in removed:
        path.unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in kept}
    result = predict(cli, models, ["run2.onnx"], out, "--engine", "onnxruntime", "--resume",
                     "--json")
    assert all(p.is_file() for p in removed)
    assert {p: p.stat().st_mtime_ns for p in kept} == mtimes
    assert_within_one_grey_level(result, expected)


def test_torch_given_an_exported_model_is_refused(workspace: Path, models: dict[str, Path],
                                                  ) -> None:
    model = workspace / "model.onnx"
    shutil.copyfile(models["run.onnx"], model)
    shutil.copyfile(models["run.onnx"].with_name("run.onnx.json"),
                    workspace / "model.onnx.json")
    assert_refused(workspace, ["predict", model, workspace / "data" / "test", "--out",
                               workspace / "p", "--engine", "torch", *CPU],
                   "runs with --engine onnxruntime")


@pytest.mark.parametrize(("options", "fragment"), [
    (["--amp", "bf16"], "--amp bf16 applies to --engine torch"),
    (["--channels-last"], "--channels-last applies to --engine torch"),
    (["--device", "cuda:x"], "--device 'cuda:x'"),
])
def test_torch_only_options_are_refused_with_onnx_runtime(cli, models: dict[str, Path],
                                                          tmp_path: Path, options: list[str],
                                                          fragment: str) -> None:
    result = cli("predict", models["run.onnx"], models["images"], "--out", tmp_path / "p",
                 "--engine", "onnxruntime", "--workers", "1", *options)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "p").exists()


def test_an_unknown_engine_is_refused(cli, models: dict[str, Path], tmp_path: Path) -> None:
    result = cli("predict", models["run"], models["images"], "--out", tmp_path / "p",
                 "--engine", "tensorrt", *CPU)
    assert_one_line_error(result, "--engine 'tensorrt'", "torch or onnxruntime")


TORCH_FREE = """
import sys
from nerveseg_cli.predict import PredictOptions, predict
result = predict([sys.argv[1]], sys.argv[2], sys.argv[3],
                 PredictOptions(engine="onnxruntime", device="cpu", workers=1, tta="flips"))
assert result.written > 0, result
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("torch modules:", loaded)
assert not loaded, loaded
"""


def test_the_onnx_path_never_imports_torch(models: dict[str, Path], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, str(models["run.onnx"]),
                           str(models["images"]), str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch modules: []" in done.stdout
    assert len(list((tmp_path / "p").glob("*.png"))) == len(list(models["images"].iterdir()))
