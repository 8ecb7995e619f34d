"""``nerveseg export``: a run folder -> an ONNX model and its JSON sidecar (docs/formats.md,
"Exported models"; docs/export.md).

The network goes through torch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``: the dynamo exporter needs onnxscript, which nerveseg does not depend on), with
a dynamic batch and, where the architecture allows, a dynamic height and width
(:mod:`nerveseg_cli.models.exportable` replaces the modules the exporter cannot translate for any
size). ``MODEL.onnx.json`` beside it holds everything a program needs to use it: the geometry,
the normalisation, the classes, the output names and layout, the prediction defaults, the opset,
and the SHA-256 of the ``.onnx`` file, so that a sidecar that does not belong to its model is
refused.

Before anything is written, ONNX Runtime runs the exported model on a few random inputs and its
outputs (logits) must equal torch's within :data:`TOLERANCE` of their scale (the largest
logit; logits are unbounded, and a random-init ResNet's reach 80), else the export is refused,
saying by how much they differ. The sidecar records the differences, in probability too.

The sidecar itself, and reading it back (``predict --engine onnxruntime``'s torch-free path),
are :mod:`.exported`'s; this module does not import torch at load time either.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nerveseg_cli.classes import Classes
from nerveseg_cli.errors import NervesegError, brief
from nerveseg_cli.inference.exported import (
    INPUT,
    MASK,
    PRESENCE,
    Sidecar,
    file_sha256,
    sidecar_path,
)
from nerveseg_cli.inference.model_info import mask_probabilities, sigmoid
from nerveseg_cli.inference.ort import import_onnxruntime, ort_session
from nerveseg_cli.records import json_text

if TYPE_CHECKING:
    from nerveseg_cli.io.runs import RunConfig

DEFAULT_OPSET = 17
OPSETS = range(13, 21)  # what the TorchScript-based exporter writes and ONNX Runtime reads
TOLERANCE = 1e-4  # largest difference of ONNX Runtime's logits from torch's, of their scale


# --------------------------------------------------------------------------------------------
# exporting


@dataclass
class ExportResult:
    out: Path
    sidecar: Path
    record: Sidecar
    replaced: list[str]  # modules replaced for the exporter (models/exportable.py)
    seconds: float

    @property
    def summary(self) -> dict[str, Any]:
        check = self.record.check
        return {"out": str(self.out), "sidecar": str(self.sidecar),
                "arch": self.record.model.get("arch"), "opset": self.record.opset,
                "dynamic_size": self.record.dynamic_size,
                "max_abs_diff_logits": check.get("max_abs_diff_logits"),
                "relative_diff": check.get("relative_diff"),
                "max_abs_diff_probability": check.get("max_abs_diff_probability"),
                "seconds": round(self.seconds, 2)}


def export_run(run: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
               overwrite: bool = False, tolerance: float = TOLERANCE) -> ExportResult:
    """Export a run folder's best weights to ``out`` (an ``.onnx`` file) and its sidecar."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise NervesegError(f"{out}: name the exported model NAME.onnx")
    _check_settings(opset, tolerance)  # before the output's folders are made
    started = time.perf_counter()
    run = Path(run)
    side = sidecar_path(out)
    from nerveseg_cli.io.outputs import Outputs, atomic_write_bytes, atomic_write_text

    with Outputs([run]) as outputs:
        model_file = outputs.file(out, overwrite=overwrite)
        sidecar_file = outputs.file(side, overwrite=overwrite)
        data, record, replaced = export_bytes(run, opset=opset, tolerance=tolerance)
        record.source["file"] = out.name
        atomic_write_bytes(model_file, data)
        atomic_write_text(sidecar_file, json_text(record.to_dict()))
    return ExportResult(out, side, record, replaced, time.perf_counter() - started)


def export_bytes(run: str | Path, *, opset: int = DEFAULT_OPSET,
                 tolerance: float = TOLERANCE) -> tuple[bytes, Sidecar, list[str]]:
    """A run folder exported in memory (``predict --engine onnxruntime`` on a run folder):
    the ``.onnx`` bytes, the sidecar, and the modules replaced for the exporter."""
    from nerveseg_cli.io.runs import BEST, CONFIG, load_run

    run = Path(run)
    config, model = load_run(run)
    source = {"run": str(run.absolute()),
              "config_sha256": file_sha256((run / CONFIG).read_bytes()),
              "weights": BEST, "weights_sha256": file_sha256((run / BEST).read_bytes())}
    return export_model(model, config, opset=opset, tolerance=tolerance, source=source,
                        where=str(run))


def _check_settings(opset: int, tolerance: float) -> None:
    if opset not in OPSETS:
        raise NervesegError(f"--opset {opset}: use {OPSETS.start} to {OPSETS.stop - 1}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise NervesegError(f"tolerance {tolerance}: must be a number >= 0")


def export_model(model: Any, config: RunConfig, *, opset: int = DEFAULT_OPSET,
                 tolerance: float = TOLERANCE, source: dict[str, Any] | None = None,
                 where: str = "model") -> tuple[bytes, Sidecar, list[str]]:
    """Export a loaded network (eval mode, on the CPU) with its run config (module
    docstring): for inputs of any size where the architecture allows, else of the geometry's.
    Refused when ONNX Runtime's logits differ from torch's by more than ``tolerance`` of their
    scale (:class:`Difference`)."""
    import torch

    from nerveseg_cli.models.exportable import exportable

    _check_settings(opset, tolerance)
    onnxruntime = import_onnxruntime()  # missing: refused before the export, which takes a while
    arch = config.model.arch
    model = model.cpu().eval()
    graph, replaced = exportable(model)
    softmax = config.classes is not None and not config.model.multilabel
    multiple = int(getattr(model, "size_multiple", 1))
    geometry = config.geometry
    checks = [_random_input(config, 2, geometry.height, geometry.width, seed=0),
              _random_input(config, 1, geometry.height + multiple, geometry.width + multiple,
                            seed=1)]
    with torch.no_grad():
        try:
            expected = [_torch_outputs(model, checks[0])]
        except Exception as exc:  # noqa: BLE001  e.g. a geometry too small for the network
            raise NervesegError(f"{where}: --arch {arch} does not run at its geometry "
                                f"{geometry.width}x{geometry.height} in torch ({brief(exc)}); "
                                "not exported") from None
        try:  # the other size tells whether a graph for any size is right
            expected.append(_torch_outputs(model, checks[1]))
        except Exception:  # noqa: BLE001  the network only runs at its own size (a ViT)
            pass
    failures: list[str] = []
    for dynamic in (True, False)[2 - len(expected):]:
        inputs = checks[:len(expected) if dynamic else 1]
        try:
            data = _export(graph, checks[0], opset, dynamic, model.has_presence)
        except Exception as exc:  # noqa: BLE001  the exporter raises many types
            failures.append(f"{type(exc).__name__}: {brief(exc, 160)}")
            continue
        session = _session(data, arch, where)
        differences = [Difference.of(session, x, reference, softmax)
                       for x, reference in zip(inputs, expected, strict=False)]
        if any(d is None for d in differences):
            failures.append(f"ONNX Runtime cannot run it at {_size(inputs, differences)}")
            continue
        worst = max(differences, key=lambda d: d.relative)
        if worst.relative <= tolerance:
            break
        failures.append(f"it differs from torch by {worst.logits:.3g} in the logits, "
                        f"{worst.relative:.3g} of their scale {worst.scale:.3g} (tolerance "
                        f"{tolerance:g}; {worst.probability:.3g} in probability)")
    else:
        raise NervesegError(f"{where}: --arch {arch} cannot be exported to ONNX "
                            f"({failures[-1]}); not exported")
    import onnx

    from nerveseg_cli.evaluation.postprocess import resolve_postprocess

    opset_used = max((o.version for o in onnx.load_from_string(data).opset_import
                      if o.domain in ("", "ai.onnx")), default=opset)
    post = resolve_postprocess(config.inference.get("threshold"),
                               config.inference.get("min_area"), None)
    record = Sidecar(
        sha256=file_sha256(data), opset=opset_used, model=config.model.to_dict(),
        geometry=geometry, mean=config.mean, std=config.std,
        in_channels=config.model.in_channels, mask_channels=config.model.mask_channels,
        presence_channels=config.model.presence_channels if model.has_presence else None,
        classes=_classes(config), multilabel=config.model.multilabel, dynamic_size=dynamic,
        size_multiple=multiple, inference=dict(config.inference),
        threshold=post.threshold, min_area=post.min_area, training=dict(config.training),
        source=dict(source or {}),
        check={"inputs": [list(x.shape) for x in inputs], "tolerance": tolerance,
               "max_abs_diff_logits": max(d.logits for d in differences),
               "logit_scale": max(d.scale for d in differences),
               "relative_diff": worst.relative,
               "max_abs_diff_probability": max(d.probability for d in differences),
               "torch": torch.__version__, "onnxruntime": onnxruntime.__version__})
    Sidecar.from_dict(record.to_dict(), Path(where))  # never write one a reader refuses
    return data, record, replaced


def _classes(config: RunConfig) -> Classes | None:
    """The run's class names; a config of several classes without them (written by hand)
    gets the names ``--classes N`` gives (a sidecar always names the classes it has)."""
    if config.classes is None and config.model.classes > 2:
        return Classes.parse(str(config.model.classes))
    return config.classes


def _size(inputs: list[np.ndarray], differences: list[Difference | None]) -> str:
    x = next(x for x, d in zip(inputs, differences, strict=True) if d is None)
    return f"{x.shape[-1]}x{x.shape[-2]}"


def _random_input(config: RunConfig, batch: int, height: int, width: int,
                  seed: int) -> np.ndarray:
    """Random grey images of the given size, normalised as predict normalises images."""
    from nerveseg_cli.geometry import normalise_array

    images = np.random.default_rng(seed).integers(0, 256, (batch, height, width), np.uint8)
    return normalise_array(images, config.mean, config.std, config.model.in_channels)


def _torch_outputs(model: Any, x: np.ndarray) -> list[np.ndarray]:
    import torch

    mask, presence = model(torch.from_numpy(x))
    return [mask.numpy()] + ([] if presence is None else [presence.numpy()])


@dataclass(frozen=True)
class Difference:
    """How far ONNX Runtime's outputs are from torch's on one input: the largest absolute
    difference of the logits, that relative to their scale (the largest absolute torch logit,
    at least 1), and of the probabilities predict makes of them."""

    logits: float
    scale: float
    probability: float

    @property
    def relative(self) -> float:
        return self.logits / self.scale

    @classmethod
    def of(cls, session: Any, x: np.ndarray, expected: list[np.ndarray], softmax: bool
           ) -> Difference | None:
        """None when ONNX Runtime cannot run the input, or gives other shapes."""
        try:
            outputs = session.run(None, {INPUT: x})
        except Exception:  # noqa: BLE001  e.g. a reshape fixed to the export size
            return None
        if [o.shape for o in outputs] != [e.shape for e in expected]:
            return None
        logits = max(float(np.abs(o - e).max(initial=0.0))
                     for o, e in zip(outputs, expected, strict=True))
        scale = max(1.0, *(float(np.abs(e).max(initial=0.0)) for e in expected))
        probability = float(np.abs(mask_probabilities(outputs[0], softmax)
                                   - mask_probabilities(expected[0], softmax)).max(initial=0.0))
        if len(outputs) > 1:
            probability = max(probability, float(np.abs(sigmoid(outputs[1])
                                                        - sigmoid(expected[1])).max()))
        return cls(logits, scale, probability)


def _export(graph: Any, example: np.ndarray, opset: int, dynamic: bool,
            presence: bool) -> bytes:
    import io

    import torch

    names = [MASK, PRESENCE] if presence else [MASK]
    spatial = {2: "height", 3: "width"} if dynamic else {}
    axes = {INPUT: {0: "batch", **spatial}, MASK: {0: "batch", **spatial}}
    if presence:
        axes[PRESENCE] = {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_stderr():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the check decides
        torch.onnx.export(graph, (torch.from_numpy(example),), buffer, dynamo=False,
                          opset_version=opset, input_names=[INPUT], output_names=names,
                          dynamic_axes=axes, do_constant_folding=True)
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: on a failure the exporter's C++ logger prints the whole
    traced graph there (thousands of lines), which the one-line error replaces."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _session(data: bytes, arch: str, where: str) -> Any:
    try:
        return ort_session(data, "cpu")
    except NervesegError:
        raise
    except Exception as exc:  # noqa: BLE001  ONNX Runtime's errors come in many types
        raise NervesegError(f"{where}: ONNX Runtime cannot load the exported {arch} "
                            f"({brief(exc)})") from None
