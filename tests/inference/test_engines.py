"""``predict --engine onnxruntime`` (nerveseg_cli/inference/engines.py): through the CLI, the maps
of an exported model and of a run folder exported on the fly equal torch's within one grey level,
with flip TTA, two runs merged by ASME, shares (``--part``) and ``--resume``; the options that apply
to torch only are refused; and the path from an ``.onnx`` file to the maps never imports torch. ONNX
Runtime's CUDA provider, with a faked provider list and session: asked for and missing, or dropped
by the session, an error with ``--device cuda``, a warning with ``auto``.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from nerveseg_cli.errors import NervesegError, NervesegWarning
from nerveseg_cli.inference.engines import ort_providers, ort_session
from nerveseg_cli.inference.export import export_run
from nerveseg_cli.io.runs import BEST, load_run, save_weights
from tests.conftest import assert_one_line_error, run_cli
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
from nerveseg_cli.inference.predict import PredictOptions, predict
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


# --------------------------------------------------------------------------------------------
# the CUDA provider, faked

CPU_EP, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"


@dataclass
class FakeOrt:
    """What the faked onnxruntime offers (``available``), what its sessions end up with
    (``got``; ``real``: a real CPU session of the model, for runs through the CLI), the
    provider lists sessions were made with, the ``preload_dlls`` calls and the packages
    installed."""

    available: list[str] = field(default_factory=lambda: [CPU_EP])
    got: list[str] = field(default_factory=lambda: [CPU_EP])
    real: bool = False
    made: list[list[Any]] = field(default_factory=list)
    preloads: int = 0
    packages: set[str] = field(default_factory=lambda: {"onnxruntime"})


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> FakeOrt:
    import onnxruntime

    fake, real_session = FakeOrt(), onnxruntime.InferenceSession

    class Session:
        def __init__(self, data: bytes, options: Any, providers: list[Any]) -> None:
            fake.made.append(providers)
            self.real = real_session(data, options, providers=[CPU_EP]) if fake.real else None

        def get_providers(self) -> list[str]:
            return list(fake.got)

        def __getattr__(self, name: str) -> Any:  # run, get_inputs ...: the real session's
            return getattr(self.real, name)

    def preload_dlls() -> None:
        fake.preloads += 1

    def distribution(name: str) -> Any:
        if name not in fake.packages:
            raise importlib.metadata.PackageNotFoundError(name)
        return name

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(fake.available))
    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    monkeypatch.setattr(onnxruntime, "preload_dlls", preload_dlls, raising=False)
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    return fake


def assert_one_line(error: pytest.ExceptionInfo[NervesegError], *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_asked_of_an_onnx_runtime_without_it_names_the_gpu_extra(
        fake_ort: FakeOrt, device: str) -> None:
    with pytest.raises(NervesegError) as error:
        ort_providers(device)
    assert_one_line(error, f"--device {device}", "no CUDA provider", CPU_EP,
                    "pip install 'nerveseg-cli[onnx-gpu]'",
                    "pip uninstall -y onnxruntime onnxruntime-gpu", "--device cpu")
    assert "both" not in str(error.value)
    assert fake_ort.preloads == 0


def test_cuda_asked_with_both_packages_installed_says_one_overwrote_the_other(
        fake_ort: FakeOrt) -> None:
    fake_ort.packages = {"onnxruntime", "onnxruntime-gpu"}
    with pytest.raises(NervesegError) as error:
        ort_providers("cuda")
    assert_one_line(error, "both onnxruntime and onnxruntime-gpu are installed", "overwrote",
                    "pip uninstall -y onnxruntime onnxruntime-gpu",
                    "pip install 'nerveseg-cli[onnx-gpu]'")
    fake_ort.available = [CUDA_EP, CPU_EP]  # the GPU package won, but its libraries are missing
    with pytest.raises(NervesegError) as error:
        ort_session(b"model", "cuda")
    assert_one_line(error, CUDA_EP, "both onnxruntime and onnxruntime-gpu are installed")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_session_that_fell_back_to_the_cpu_is_an_error_with_cuda_asked(
        fake_ort: FakeOrt, device: str) -> None:
    fake_ort.available = [CUDA_EP, CPU_EP]
    with pytest.raises(NervesegError) as error:
        ort_session(b"model", device)
    assert_one_line(error, f"--device {device}", f"got {CPU_EP}, not {CUDA_EP}",
                    "CUDA or cuDNN libraries were not found", "--device cpu")
    index = int(device[5:]) if ":" in device else 0
    assert fake_ort.made == [[(CUDA_EP, {"device_id": index}), CPU_EP]]
    assert fake_ort.preloads == 1


def test_a_session_that_fell_back_with_auto_warns_and_runs_on_the_cpu(fake_ort: FakeOrt) -> None:
    fake_ort.available = [CUDA_EP, CPU_EP]
    with pytest.warns(NervesegWarning, match=f"--device auto: .*got {CPU_EP}, not {CUDA_EP}"):
        session = ort_session(b"model", "auto")
    assert session.get_providers() == [CPU_EP]
    assert fake_ort.made == [[CUDA_EP, CPU_EP]]
    assert fake_ort.preloads == 1


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0"])
def test_a_session_on_cuda_passes_quietly(fake_ort: FakeOrt, device: str) -> None:
    fake_ort.available = fake_ort.got = [CUDA_EP, CPU_EP]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ort_session(b"model", device).get_providers() == [CUDA_EP, CPU_EP]
    assert fake_ort.preloads == 1


@pytest.mark.parametrize(("device", "available"), [
    ("auto", [CPU_EP]), ("cpu", [CPU_EP]), ("cpu", [CUDA_EP, CPU_EP])])
def test_no_cuda_wanted_means_cpu_only_no_preload_no_warning(
        fake_ort: FakeOrt, device: str, available: list[str]) -> None:
    fake_ort.available = available
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ort_session(b"model", device)
    assert fake_ort.made == [[CPU_EP]]
    assert fake_ort.preloads == 0


def test_an_onnx_runtime_without_preload_dlls_still_checks_the_session(
        fake_ort: FakeOrt, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.delattr(onnxruntime, "preload_dlls")  # before 1.21
    fake_ort.available = fake_ort.got = [CUDA_EP, CPU_EP]
    ort_session(b"model", "cuda")
    fake_ort.got = [CPU_EP]
    with pytest.raises(NervesegError, match=CUDA_EP):
        ort_session(b"model", "cuda")


def test_a_failing_preload_is_reported_by_the_provider_check(
        fake_ort: FakeOrt, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    def preload_dlls() -> None:
        raise RuntimeError("Invalid parameter of directory=x. The directory does not exist!")

    monkeypatch.setattr(onnxruntime, "preload_dlls", preload_dlls)
    fake_ort.available = [CUDA_EP, CPU_EP]
    with pytest.raises(NervesegError) as error:
        ort_session(b"model", "cuda")
    assert_one_line(error, "preload_dlls failed: Invalid parameter", CUDA_EP)


def test_onnx_runtime_printing_its_fallback_leaves_stdout_alone(
        fake_ort: FakeOrt, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime

    class Printing:
        def __init__(self, data: bytes, options: Any, providers: list[Any]) -> None:
            print("EP Error ... Falling back to ['CPUExecutionProvider'] and retrying.")

        def get_providers(self) -> list[str]:
            return [CPU_EP]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Printing)
    fake_ort.available = [CUDA_EP, CPU_EP]
    with pytest.warns(NervesegWarning):
        ort_session(b"model", "auto")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Falling back" in captured.err


@pytest.mark.parametrize("packages", [set(), {"onnxruntime", "onnxruntime-gpu"}])
def test_onnx_runtime_missing_names_both_install_lines(
        fake_ort: FakeOrt, monkeypatch: pytest.MonkeyPatch, packages: set[str]) -> None:
    fake_ort.packages = packages
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    for call in (lambda: ort_providers("cpu"), lambda: ort_session(b"model", "auto")):
        with pytest.raises(NervesegError) as error:
            call()
        assert_one_line(error, "ONNX Runtime", "pip install 'nerveseg-cli[onnx]'",
                        "pip install 'nerveseg-cli[onnx-gpu]'",
                        "pip uninstall -y onnxruntime onnxruntime-gpu")
        assert ("both onnxruntime and onnxruntime-gpu are installed" in str(error.value)) \
            == bool(packages)


def test_export_without_onnx_runtime_is_refused_before_exporting(
        fake_ort: FakeOrt, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = run_cli("export", workspace / "run", "--out", workspace / "m.onnx")
    assert_one_line_error(result, "ONNX Runtime", "nerveseg-cli[onnx]", "nerveseg-cli[onnx-gpu]")
    assert not (workspace / "m.onnx").exists()


def test_predict_with_cuda_asked_and_a_session_on_the_cpu_is_refused(
        fake_ort: FakeOrt, models: dict[str, Path], tmp_path: Path) -> None:
    fake_ort.available, fake_ort.real = [CUDA_EP, CPU_EP], True
    result = run_cli("predict", models["run.onnx"], models["images"], "--out", tmp_path / "p",
                     "--engine", "onnxruntime", "--device", "cuda", "--workers", "1")
    assert_one_line_error(result, "--device cuda", f"not {CUDA_EP}", "--device cpu")
    assert not (tmp_path / "p").exists()


def test_predict_with_auto_and_a_session_on_the_cpu_warns_once_and_runs(
        fake_ort: FakeOrt, models: dict[str, Path], tmp_path: Path) -> None:
    fake_ort.available, fake_ort.real = [CUDA_EP, CPU_EP], True
    result = run_cli("predict", models["run.onnx"], models["images"], "--out", tmp_path / "p",
                     "--engine", "onnxruntime", "--device", "auto", "--workers", "1", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert json.loads(result.stdout)["written"] == len(list(models["images"].iterdir()))
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and f"not {CUDA_EP}" in lines[0], result.stderr
