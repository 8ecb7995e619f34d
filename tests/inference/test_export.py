"""``nerveseg export`` (docs/export.md, docs/formats.md "Exported models"): every architecture
family round-trips through ONNX with ONNX Runtime's logits equal to torch's, the sidecar
describes the model, an unexportable network is one clear error, and bad input (a damaged model,
a sidecar that disagrees with it, bad options) is refused with nothing written.

The round trips build tiny random-init networks in memory (no training): what is compared is
the graph, not what the weights learnt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from nerveseg_cli.classes import Classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.geometry import Geometry
from nerveseg_cli.inference.engines import ort_session
from nerveseg_cli.inference.export import (
    DEFAULT_OPSET,
    INPUT,
    MASK,
    PRESENCE,
    export_model,
    file_sha256,
    sidecar_path,
)
from nerveseg_cli.inference.exported import load_exported
from nerveseg_cli.io.runs import RunConfig
from nerveseg_cli.models import ModelConfig, SegmentationNet, build_model
from tests.hostile import assert_refused

GEOMETRY = Geometry("pad", 64, 64)
MEAN, STD = 0.4, 0.2


def run_config(arch: str, extra: dict | None = None, *, encoder: str = "resnet18",
               presence: bool = False, classes: int = 2, multilabel: bool = False,
               geometry: Geometry = GEOMETRY, inference: dict | None = None) -> RunConfig:
    model = ModelConfig(arch, encoder, "none", 1, None, presence, extra, classes, multilabel)
    names = Classes.parse(str(classes)) if classes > 2 else None
    return RunConfig(model, geometry, MEAN, STD, {"arch": arch}, dict(inference or {}), names)


def build(config: RunConfig) -> SegmentationNet:
    torch.manual_seed(0)
    return build_model(config.model).eval()


# (id, config, modules the exporter needs replaced: models/exportable.py)
FAMILIES = [
    ("smp-unet-resnet18", run_config("unet"), []),
    ("unet-plain", run_config("unet-plain", {"width": 4}), []),
    ("sharp-unet", run_config("sharp-unet", {"width": 4}), ["net.skip"]),
    ("r2unet", run_config("r2unet", {"width": 4, "batch_norm": True}), []),
    ("attention-unet", run_config("attention-unet", {"width": 4}), []),
    ("attention-resunet", run_config("attention-resunet", {"width": 4}), []),
    ("inception-two-head", run_config("inception-unet", {"width": 16}, presence=True),
     ["net.presence.pool"]),
    ("fcn8s", run_config("fcn8s", {"width": 8}), []),
    ("ragcm-sharp", run_config("ragcm", {"skip": "sharp"}),
     ["net.sharpen", *(f"net.context.regions.{i}.0" for i in range(3))]),
    ("softmax-3-classes", run_config("unet-plain", {"width": 4}, classes=3), []),
    ("per-class-decoders", run_config("unet", {"decoders": "per-class"}, classes=3), []),
    ("multilabel-presence", run_config("unet-plain", {"width": 4}, classes=3,
                                       multilabel=True, presence=True), []),
    ("binary-presence", run_config("unet-plain", {"width": 4}, presence=True,
                                   inference={"threshold": 0.35, "min_area": 12}), []),
]


def torch_outputs(model: SegmentationNet, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        mask, presence = model(torch.from_numpy(x))
    return [mask.numpy()] + ([] if presence is None else [presence.numpy()])


def assert_same_logits(data: bytes, model: SegmentationNet, x: np.ndarray) -> None:
    """ONNX Runtime's outputs of ``x`` equal torch's within 1e-4 of their scale."""
    session = ort_session(data, "cpu")
    names = [MASK, PRESENCE] if model.has_presence else [MASK]
    actual = session.run(names, {INPUT: x})
    expected = torch_outputs(model, x)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        scale = max(1.0, float(np.abs(e).max()))
        assert float(np.abs(a - e).max()) <= 1e-4 * scale


@pytest.mark.parametrize(("config", "replaced"), [f[1:] for f in FAMILIES],
                         ids=[f[0] for f in FAMILIES])
def test_every_family_round_trips_with_a_sidecar_describing_it(config: RunConfig,
                                                               replaced: list[str]) -> None:
    model = build(config)
    data, sidecar, modules = export_model(model, config)
    assert modules == replaced
    assert sidecar.sha256 == file_sha256(data)
    assert sidecar.opset == DEFAULT_OPSET
    assert sidecar.dynamic_size and sidecar.geometry == GEOMETRY
    assert (sidecar.mean, sidecar.std, sidecar.in_channels) == (MEAN, STD, 1)
    assert sidecar.mask_channels == config.model.mask_channels
    assert sidecar.classes == config.classes
    assert sidecar.softmax == (config.classes is not None and not config.model.multilabel)
    assert (sidecar.presence_channels is not None) == config.model.presence_head
    assert (sidecar.threshold, sidecar.min_area) == (
        (0.35, 12) if config.inference else (0.5, 0))
    assert sidecar.check["relative_diff"] <= 1e-4
    rng = np.random.default_rng(3)
    # the export size, and another one (the graph is for any size a multiple allows)
    for batch, height, width in ((2, 64, 64), (1, 96, 128)):
        x = ((rng.random((batch, 1, height, width)) - MEAN) / STD).astype(np.float32)
        assert_same_logits(data, model, x)


def test_a_network_only_for_its_own_size_exports_at_that_size() -> None:
    """smp's DPT (a ViT encoder at 224x224) runs at one size only: the graph is fixed to the
    geometry and the sidecar says so."""
    config = run_config("dpt", encoder="tu-vit_tiny_patch16_224",
                        geometry=Geometry("resize", 224, 224))
    model = build(config)
    data, sidecar, _ = export_model(model, config)
    assert not sidecar.dynamic_size
    assert sidecar.to_dict()["input"]["shape"] == ["batch", 1, 224, 224]
    x = np.random.default_rng(0).standard_normal((1, 1, 224, 224)).astype(np.float32)
    assert_same_logits(data, model, x)


@pytest.mark.parametrize(("arch", "size"), [
    ("unetplusplus", 64), ("manet", 64), ("linknet", 64), ("fpn", 64), ("pspnet", 64),
    ("deeplabv3", 64), ("deeplabv3plus", 64), ("pan", 128), ("upernet", 64), ("segformer", 64),
])
def test_the_other_smp_architectures_export(arch: str, size: int) -> None:
    config = run_config(arch, geometry=Geometry("pad", size, size))
    data, sidecar, _ = export_model(build(config), config)
    assert sidecar.dynamic_size and sidecar.check["relative_diff"] <= 1e-4
    assert sidecar.sha256 == file_sha256(data)


def test_a_config_of_several_classes_without_names_gets_numbered_names() -> None:
    """A hand-written config.json may give the class count alone: the sidecar still names
    the classes (as ``--classes 3`` does), so that a reader accepts it."""
    config = run_config("unet-plain", {"width": 4}, classes=3)
    config.classes = None
    _, sidecar, _ = export_model(build(config), config)
    assert sidecar.to_dict()["classes"] == ["background", "class1", "class2"]


class _SpectralNet(nn.Module):
    """A convolution scaled by its output's largest singular value: ``linalg_svdvals`` has
    no ONNX translation at any opset."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * torch.linalg.svdvals(y[0, 0]).max()


def test_an_unexportable_network_is_one_error_naming_its_architecture() -> None:
    config = run_config("unet-plain", {"width": 4})
    config.model.arch = "opaque-net"
    with pytest.raises(NervesegError, match="--arch opaque-net cannot be exported to ONNX") \
            as error:
        export_model(SegmentationNet(_SpectralNet(), 1, False), config, where="tiny")
    message = str(error.value)
    assert "\n" not in message and "linalg_svdvals" in message and "not exported" in message


def test_an_export_differing_from_torch_is_refused_saying_by_how_much() -> None:
    config = run_config("unet")
    with pytest.raises(NervesegError, match=r"differs from torch by .*\(tolerance 1e-12;"):
        export_model(build(config), config, tolerance=1e-12)


def test_a_geometry_the_network_cannot_run_at_is_one_error() -> None:
    config = run_config("pan", geometry=Geometry("pad", 32, 32))  # pan needs 128 and more
    with pytest.raises(NervesegError, match="does not run at its geometry 32x32"):
        export_model(build(config), config)


# --------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def other_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different network's export, for a sidecar that belongs to another model."""
    config = run_config("unet-plain", {"width": 4})
    data, sidecar, _ = export_model(build(config), config)
    out = tmp_path_factory.mktemp("other") / "other.onnx"
    out.write_bytes(data)
    sidecar_path(out).write_text(json.dumps(sidecar.to_dict()))
    return out


def test_export_writes_the_model_and_a_sidecar_that_matches_it(cli, hostile_base: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "deep" / "model.onnx"
    result = cli("export", hostile_base / "run", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["arch"] == "unet-plain" and summary["opset"] == DEFAULT_OPSET
    assert summary["relative_diff"] <= 1e-4
    record = json.loads(sidecar_path(out).read_text())
    config = json.loads((hostile_base / "run" / "config.json").read_text())
    assert record["sha256"] == file_sha256(out.read_bytes())
    assert record["geometry"] == config["geometry"]
    assert record["normalization"] == config["normalization"]
    assert record["postprocess"] == {"threshold": 0.5, "min_area": 0}
    assert record["classes"] is None and record["outputs"]["presence_logits"] is None
    assert record["input"]["name"] == INPUT and record["outputs"]["mask_logits"]["name"] == MASK
    assert record["source"]["file"] == "model.onnx"
    assert record["source"]["weights_sha256"] == file_sha256(
        (hostile_base / "run" / "model.safetensors").read_bytes())
    load_exported(out)  # the sidecar is accepted as the model's own


def test_export_prints_small_differences_in_scientific_notation(cli, hostile_base: Path,
                                                                tmp_path: Path) -> None:
    result = cli("export", hostile_base / "run", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "relative_diff" in line)
    assert "e-" in row or row.split()[-2] == "0.00e+00", row


def _copy_export(exported: Path, workspace: Path, name: str = "model.onnx") -> Path:
    target = workspace / name
    shutil.copyfile(exported, target)
    shutil.copyfile(sidecar_path(exported), sidecar_path(target))
    return target


def _edit_sidecar(model: Path, **changes: Any) -> None:
    path = sidecar_path(model)
    record = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            record[section][field] = value
        else:
            record[section] = value
    path.write_text(json.dumps(record))


def _predict(model: Path, workspace: Path) -> list[str | Path]:
    return ["predict", model, workspace / "data" / "test", "--out", workspace / "probs_ort",
            "--engine", "onnxruntime", "--device", "cpu", "--workers", "1"]


def test_a_corrupt_onnx_file_is_not_a_readable_model(workspace: Path, exported: Path) -> None:
    model = _copy_export(exported, workspace)
    junk = np.random.default_rng(0).bytes(4096)
    model.write_bytes(junk)
    _edit_sidecar(model, sha256=file_sha256(junk))  # the sidecar matches: the bytes are bad
    assert_refused(workspace, _predict(model, workspace), "not a readable ONNX model",
                   str(model))


def test_a_wrong_sha256_is_refused(workspace: Path, exported: Path) -> None:
    model = _copy_export(exported, workspace)
    _edit_sidecar(model, sha256="0" * 64)
    assert_refused(workspace, _predict(model, workspace), "records SHA-256 000000000000",
                   "belongs to another export")


def test_the_sidecar_of_another_export_is_refused(workspace: Path, exported: Path,
                                                  other_export: Path) -> None:
    model = _copy_export(exported, workspace)
    shutil.copyfile(sidecar_path(other_export), sidecar_path(model))
    assert_refused(workspace, _predict(model, workspace), "belongs to another export")


@pytest.mark.parametrize(("changes", "fragment"), [
    # the sidecar says its input channels three times (shape, model record, export check)
    ({"input__shape": ["batch", 3, "height", "width"]},
     "input channels 3 but its export check (check.inputs) says 1"),
    ({"outputs__mask_logits": {"name": MASK, "shape": ["batch", 2, "height", "width"]}},
     "2 mask channels for a binary model"),
    ({"outputs__presence_logits": {"name": PRESENCE, "shape": ["batch"]}},
     "presence output True but its model record says False"),
    # every record of the sidecar edited alike: the graph itself refuses it
    ({"outputs__presence_logits": {"name": PRESENCE, "shape": ["batch"]},
      "model__presence_head": True, "training__presence_head": True},
     "sidecar says mask_logits, presence_logits"),
])
def test_a_sidecar_edited_to_other_channels_is_refused(workspace: Path, exported: Path,
                                                       changes: dict[str, Any],
                                                       fragment: str) -> None:
    model = _copy_export(exported, workspace)
    _edit_sidecar(model, **changes)
    assert_refused(workspace, _predict(model, workspace), fragment)


def test_a_model_without_its_sidecar_is_refused(workspace: Path, exported: Path) -> None:
    model = _copy_export(exported, workspace)
    sidecar_path(model).unlink()
    assert_refused(workspace, _predict(model, workspace), "sidecar model.onnx.json is missing")


@pytest.mark.parametrize(("out", "extra", "fragment"), [
    ("model.txt", [], "name the exported model NAME.onnx"),
    ("run/model.onnx", [], "the output lies inside the input"),
    ("sub/model.onnx", ["--opset", "99"], "--opset 99: use 13 to 20"),
])
def test_export_refuses_bad_options_before_writing(workspace: Path, out: str,
                                                   extra: list[str], fragment: str) -> None:
    assert_refused(workspace, ["export", workspace / "run", "--out", workspace / out, *extra],
                   fragment)


def test_export_inside_the_run_names_the_run_as_its_input(workspace: Path) -> None:
    result = assert_refused(workspace, ["export", workspace / "run", "--out",
                                        workspace / "run" / "model.onnx"])
    assert "input" in result.stderr, result.stderr


def test_an_existing_export_needs_overwrite(workspace: Path, exported: Path) -> None:
    model = _copy_export(exported, workspace)
    assert_refused(workspace, ["export", workspace / "run", "--out", model], "--overwrite")


def test_an_existing_sidecar_alone_needs_overwrite_too(workspace: Path, exported: Path) -> None:
    model = _copy_export(exported, workspace)
    model.unlink()
    assert_refused(workspace, ["export", workspace / "run", "--out", model], "--overwrite")
