"""``nerveseg crf``: refine probability maps with a fully connected CRF (seed 004 §2.4, §4.4).

Model (Krähenbühl and Koltun 2011, through pydensecrf2), two labels per pixel:

* unary: -log p and -log(1 - p) from the probability map, with p clipped to
  [0.5/255, 1 - 0.5/255]: an 8-bit value stands for every p within half a level of it, so a
  stored 0 or 255 is "very sure", not "infinitely sure";
* smoothness: Potts weight ``compat_gaussian`` times exp(-|x_i - x_j|^2 / 2 sxy_gaussian^2),
  x the pixel positions;
* appearance: Potts weight ``compat_bilateral`` times
  exp(-|x_i - x_j|^2 / 2 sxy_bilateral^2 - |I_i - I_j|^2 / 2 schan^2), on the grayscale image
  (0..255), with one intensity channel (pydensecrf's generic pairwise energy rather than an
  RGB stack: stacking a gray image into 3 equal channels is the same kernel with schan divided
  by sqrt(3), on a 5-D lattice instead of a 3-D one);
* ``iterations`` rounds of mean-field inference; the output is the foreground marginal Q(1).

Defaults, and why (580x420 ultrasound, nerve about 60-120 px across):

* ``sxy_gaussian=3, compat_gaussian=3``: the usual smoothness kernel of the reference code;
  it removes specks of a few pixels and barely moves a boundary.
* ``sxy_bilateral=10``: the appearance kernel reaches about 10-20 px, enough to pull a
  boundary a few pixels onto an edge. The widely copied VOC setting (80 px) lets the much larger
  background outvote a nerve-sized object: on a blurred nerve mask of ``1_1.tif`` it erased
  the nerve entirely.
* ``schan=20``: above the speckle (local standard deviation about 15 gray levels in the Kaggle
  images), so speckle alone does not cut the kernel, while real edges of 40+ levels do.
* ``compat_bilateral=3``: equal to the smoothness weight; larger values let the image override
  the network, which the weak contrast of ultrasound does not justify.
* ``iterations=5``: on a blurred nerve mask of ``1_1.tif`` the 5-iteration mask differs from the
  30-iteration one in about 120 boundary pixels (under 3% of the nerve); each further round
  costs about 20 ms at 580x420, on top of about 90 ms of set-up.

Seed 004's setting (θα=5, θβ=0.01, θγ=1, 10 iterations) is ``--sxy-bilateral 5 --schan 0.01
--sxy-gaussian 1 --iterations 10``.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from nerveseg_cli.classes import Classes, class_record, write_classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.datasets import Sample, discover_images, sort_ids
from nerveseg_cli.io.images import read_raw, to_uint8_gray
from nerveseg_cli.io.outputs import Outputs
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.io.probmaps import (
    PRESENCE_CSV,
    ProbabilityFolder,
    check_resume,
    is_class_folder,
    read_class_folders,
    read_prediction_json,
    read_probability_folder,
    read_probability_values,
    write_prediction_json,
    write_presence,
    write_probability,
)

UNARY_CLIP = 0.5 / 255


@dataclass(frozen=True)
class CrfParams:
    """The CRF's kernels and inference length (defaults and reasoning: module docstring)."""

    sxy_gaussian: float = 3.0
    compat_gaussian: float = 3.0
    sxy_bilateral: float = 10.0
    schan: float = 20.0
    compat_bilateral: float = 3.0
    iterations: int = 5

    def validate(self) -> CrfParams:
        for name in ("sxy_gaussian", "sxy_bilateral", "schan"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise NervesegError(f"--{name.replace('_', '-')} {value} must be > 0")
        for name in ("compat_gaussian", "compat_bilateral"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise NervesegError(f"--{name.replace('_', '-')} {value} must be >= 0")
        if self.iterations < 0:
            raise NervesegError(f"--iterations {self.iterations} must be >= 0")
        return self


# --------------------------------------------------------------------------------------------
# one image


def unary_energy(probability: np.ndarray) -> np.ndarray:
    """(2, H*W) float32 C-contiguous energies [-log(1-p), -log p] (label 1 = foreground)."""
    array = np.asarray(probability)
    if array.dtype == np.uint8:
        p = array.astype(np.float32) / np.float32(255)
    else:
        p = array.astype(np.float32)
    p = np.clip(p, UNARY_CLIP, 1 - UNARY_CLIP).reshape(-1)
    energy = np.empty((2, p.size), dtype=np.float32)
    np.log1p(-p, out=energy[0])
    np.log(p, out=energy[1])
    np.negative(energy, out=energy)
    return energy


def class_unary_energy(probabilities: np.ndarray) -> np.ndarray:
    """(C, H*W) float32 C-contiguous energies -log q for C labels, from (K, H, W) foreground
    class probabilities (uint8 values or floats): the background is what the classes leave,
    each clipped as the binary case is and normalised to sum 1 per pixel."""
    array = np.asarray(probabilities)
    p = array.astype(np.float32) / np.float32(255) if array.dtype == np.uint8 else \
        array.astype(np.float32)
    p = np.clip(p.reshape(p.shape[0], -1), UNARY_CLIP, 1 - UNARY_CLIP)
    background = np.clip(1 - p.sum(axis=0, keepdims=True), UNARY_CLIP, 1 - UNARY_CLIP)
    q = np.concatenate([background, p])
    q /= q.sum(axis=0, keepdims=True)
    return np.ascontiguousarray(-np.log(q), dtype=np.float32)


def bilateral_features(image: np.ndarray, sxy: float, schan: float) -> np.ndarray:
    """(3, H*W) float32 features [y / sxy, x / sxy, I / schan] of a 2-D grayscale image."""
    height, width = image.shape
    features = np.empty((3, height, width), dtype=np.float32)
    features[0] = (np.arange(height, dtype=np.float32) / np.float32(sxy))[:, None]
    features[1] = (np.arange(width, dtype=np.float32) / np.float32(sxy))[None, :]
    np.multiply(image, np.float32(1.0 / schan), out=features[2], dtype=np.float32)
    return features.reshape(3, -1)


def crf_refine_classes(probabilities: np.ndarray, image: np.ndarray,
                       params: CrfParams = CrfParams()) -> np.ndarray:
    """Marginals (K, H, W) of the foreground classes after a dense CRF with C = K + 1 labels on
    one image (pydensecrf's n-label model: one CRF, not K binary ones)."""
    image = np.asarray(image)
    if np.shape(probabilities)[1:] != image.shape:
        raise ValueError(f"probabilities {np.shape(probabilities)} and image {image.shape} "
                         "differ")
    unary = class_unary_energy(probabilities)
    return _inference(unary, image, params)[1:]


def crf_refine(probability: np.ndarray, image: np.ndarray,
               params: CrfParams = CrfParams()) -> np.ndarray:
    """Foreground marginals (H x W float32 in [0, 1]) of the dense CRF on one image.

    ``probability``: H x W uint8 map values or float probabilities; ``image``: H x W grayscale
    (uint8, values 0..255). Inputs are not modified.
    """
    image = np.asarray(image)
    if np.shape(probability) != image.shape:
        raise ValueError(f"probability {np.shape(probability)} and image {image.shape} differ")
    return _inference(unary_energy(probability), image, params)[1]


def _inference(unary: np.ndarray, image: np.ndarray, params: CrfParams) -> np.ndarray:
    """(C, H, W) float32 marginals of the dense CRF with ``unary`` (C, H*W) energies."""
    import pydensecrf.densecrf as dcrf

    if image.ndim != 2:
        raise ValueError(f"the CRF needs a 2-D grayscale image, got shape {image.shape}")
    height, width = image.shape
    model = dcrf.DenseCRF2D(width, height, unary.shape[0])
    model.setUnaryEnergy(unary)  # pydensecrf keeps a view: unary lives until the end here
    if params.compat_gaussian > 0:
        model.addPairwiseGaussian(sxy=params.sxy_gaussian, compat=params.compat_gaussian)
    features = None
    if params.compat_bilateral > 0:
        features = bilateral_features(image, params.sxy_bilateral, params.schan)
        model.addPairwiseEnergy(features, compat=params.compat_bilateral)
    marginals = np.asarray(model.inference(params.iterations), dtype=np.float32)
    del features
    return np.ascontiguousarray(marginals.reshape(unary.shape[0], height, width))


# --------------------------------------------------------------------------------------------
# reading images for the CRF


def read_gray_image(path: Path) -> np.ndarray:
    """Read an image the CRF can use: 2-D grayscale, as uint8 (16-bit divided by 257).

    A multi-page file (a volume) or a true colour image is an error: the appearance term is
    defined on one intensity channel. A colour file whose channels are equal is read as gray.
    """
    raw = read_raw(path)  # first: it gives the error for a missing or unreadable file
    if path.suffix.lower() in (".tif", ".tiff"):
        pages = cv2.imcount(str(path))
        if pages > 1:
            raise NervesegError(f"{path}: holds {pages} pages (a volume); the CRF works on "
                                "2-D grayscale images")
    if raw.ndim == 3 and raw.shape[2] > 1:
        colour = raw[:, :, : min(3, raw.shape[2])]
        if np.any(colour != colour[:, :, :1]):
            raise NervesegError(f"{path}: not a 2-D grayscale image ({raw.shape[1]}x"
                                f"{raw.shape[0]}x{raw.shape[2]} colour); the CRF's "
                                "appearance term works on grayscale images")
        raw = colour[:, :, 0]
    elif raw.ndim not in (2, 3):
        raise NervesegError(f"{path}: not a 2-D image (shape {raw.shape})")
    return to_uint8_gray(raw)


# --------------------------------------------------------------------------------------------
# the command


@dataclass(frozen=True)
class CrfTask:
    sample_id: str
    probabilities: tuple[Path, ...]  # one map, or one per foreground class
    image: Path
    outs: tuple[Path, ...]
    shape: tuple[int, int]
    params: CrfParams


def refine_file(task: CrfTask) -> str:
    """Read an image's map(s) and the image, refine, write atomically; returns the id. One
    map: the binary CRF; one per class: one CRF with a label per class and the background."""
    values = np.stack([read_probability_values(p, task.shape) for p in task.probabilities])
    image = read_gray_image(task.image)
    if image.shape != values.shape[1:]:
        raise NervesegError(f"{task.probabilities[0]}: map is {values.shape[2]}x"
                            f"{values.shape[1]} but its image {task.image} is "
                            f"{image.shape[1]}x{image.shape[0]}")
    refined = crf_refine(values[0], image, task.params)[None] if len(values) == 1 else \
        crf_refine_classes(values, image, task.params)
    for out, marginal in zip(task.outs, refined, strict=True):
        write_probability(out, marginal)
    return task.sample_id


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one CRF per process; no oversubscription from OpenCV's pool


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _process_context() -> multiprocessing.context.BaseContext:
    """forkserver where available: workers fork from a clean server that imported this module
    once (fast start, no locks inherited from this process's threads); else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["nerveseg_cli.inference.crf", "pydensecrf.densecrf"])
        return context
    return multiprocessing.get_context("spawn")


def run_tasks(tasks: Sequence[CrfTask], workers: int,
              progress: Callable[[int], None] | None = None) -> None:
    """Refine every task, in this process (workers=1) or in a pool of processes."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            refine_file(task)
            if progress:
                progress(1)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                             mp_context=_process_context(),
                             initializer=_worker_init) as pool:
        pending: set[Future] = {pool.submit(refine_file, task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # re-raises a worker's error here
                    if progress:
                        progress(1)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


@dataclass
class CrfResult:
    out: Path
    refined: list[str]
    skipped: list[str] = field(default_factory=list)  # --resume: already written
    presence_written: bool = False


def match_images(folder: ProbabilityFolder, images: str | Path) -> dict[str, Sample]:
    samples = {s.id: s for s in discover_images(images) if s.image is not None}
    lacking = [i for i in folder.ids if i not in samples]
    if lacking:
        raise NervesegError(f"{images}: no image for {len(lacking)} maps of {folder.path} "
                            f"(first: {', '.join(lacking[:5])})")
    return samples


def crf(probs: str | Path, images: str | Path, out: str | Path, *,
        params: CrfParams = CrfParams(), workers: int | None = None, resume: bool = False,
        overwrite: bool = False,
        progress: Callable[[int], None] | None = None) -> CrfResult:
    """``nerveseg crf``: refine a probability folder (one class, or several: classes.json and
    a folder per class) with its images into a new one.

    Everything is checked before anything is written: the maps' PNG headers, that every map has
    an image, that the image is 2-D grayscale and of the map's size. ``resume`` skips ids whose
    output already exists (writes are atomic, so an existing file is complete).
    """
    params.validate()
    out = Path(out)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise NervesegError(f"--workers {workers} must be >= 1")
    classes, members = _read_members(probs)
    folder = next(iter(members.values()))
    samples = match_images(folder, images)
    Outputs.preflight(_input_paths(probs, images, samples), folders=[out], overwrite=overwrite,
                      resume=resume)
    options = asdict(params)
    inputs = {"probabilities": str(probs), "images": str(images)}
    if resume and not overwrite:
        check_resume(out, "crf", inputs, options)
    done = _done(out, members, folder.ids) if resume else set()
    todo = [i for i in folder.ids if i not in done]
    _check_images(folder, samples, todo)
    with Outputs(_input_paths(probs, images, samples)) as outputs:
        out = outputs.resumable_folder(out, overwrite=overwrite, resume=resume,
                                       resumable=_has_maps(out))
        if classes is not None:  # the class folders, all checked before the first write
            outputs.subfolders(out, members)
        plan = _CrfPlan(classes, members, samples, todo, done, params, inputs)
        _refine_all(plan, out, workers, progress)
    return CrfResult(out, todo, sort_ids(done), folder.presence is not None)


def _read_members(probs: str | Path) -> tuple[Classes | None,
                                               dict[str, ProbabilityFolder]]:
    """The folder's classes (None: one) and its probability folder(s), by class ("": one)."""
    if is_class_folder(probs):
        return read_class_folders(probs)
    return None, {"": read_probability_folder(probs)}


def _done(out: Path, members: dict[str, ProbabilityFolder], ids: list[str]) -> set[str]:
    """Ids whose every refined map is already in ``out``."""
    return {i for i in ids if all((out / name / f"{i}.png").is_file() for name in members)}


def _check_images(folder: ProbabilityFolder, samples: dict[str, Sample],
                  todo: list[str]) -> None:
    def check(sample_id: str) -> None:
        image_path = samples[sample_id].image
        image = read_gray_image(image_path)
        shape = folder.sizes[sample_id]
        if image.shape != shape:
            raise NervesegError(f"{folder.files[sample_id]}: map is {shape[1]}x{shape[0]} but "
                                f"its image {image_path} is {image.shape[1]}x{image.shape[0]}")

    for _ in thread_map(check, todo, 4):
        pass


def _input_paths(probs: str | Path, images: str | Path,
                 samples: dict[str, Sample]) -> list[Path]:
    return [Path(probs), Path(images), *{s.image.parent for s in samples.values() if s.image}]


def _has_maps(folder: Path) -> Callable[[set[str]], bool]:
    """Whether a failed run left complete maps a --resume can keep (in class folders too)."""
    def resumable(added: set[str]) -> bool:
        return any(name.endswith(".png") or any((folder / name).glob("*.png"))
                   for name in added)

    return resumable


@dataclass(frozen=True)
class _CrfPlan:
    """What crf checked and will do."""

    classes: Classes | None
    members: dict[str, ProbabilityFolder]  # by class name ("": one class)
    samples: dict[str, Sample]
    todo: list[str]
    done: set[str]
    params: CrfParams
    inputs: dict[str, str]


def _refine_all(plan: _CrfPlan, out: Path, workers: int,
                progress: Callable[[int], None] | None) -> None:
    """Refine the ``todo`` maps into ``out``, with presence and provenance."""
    options = asdict(plan.params)
    classes = class_record(plan.classes)  # every prediction.json here names the class list
    folder = next(iter(plan.members.values()))
    # the input's own provenance: its top-level prediction.json when it holds several classes
    upstream = (folder.prediction if plan.classes is None
                else read_prediction_json(plan.inputs["probabilities"]))
    if plan.classes is not None:
        write_classes(out, plan.classes)
    tasks = [CrfTask(i, tuple(m.files[i] for m in plan.members.values()),
                     plan.samples[i].image, tuple(out / name / f"{i}.png" for name in
                                                  plan.members),
                     folder.sizes[i], plan.params) for i in plan.todo]
    # Written first as incomplete, so an interrupted folder says what it is and a --resume
    # with other options is refused; rewritten as complete at the end.
    write_prediction_json(out, "crf", plan.inputs, options, upstream=upstream,
                          extra={"complete": False, "images": len(folder.ids), **classes})
    if progress and plan.done:
        progress(len(plan.done))
    run_tasks(tasks, workers, progress)
    for name, member in plan.members.items():
        if member.presence is not None:
            write_presence(out / name / PRESENCE_CSV, member.presence)
        if name:  # each class folder says what it is, for the binary tools that read it
            write_prediction_json(out / name, "crf", plan.inputs, options,
                                  upstream=member.prediction,
                                  extra={"class": name, **classes})
    write_prediction_json(out, "crf", plan.inputs, options, upstream=upstream,
                          extra={"complete": True, "images": len(folder.ids),
                                 "skipped_on_resume": len(plan.done), **classes})
