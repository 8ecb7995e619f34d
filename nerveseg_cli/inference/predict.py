"""``nerveseg predict``: run folders + images -> a probability folder.

Per batch: images are decoded in background threads, brought to each run's geometry on the
CPU, predicted on the device under every TTA variant (each flip inverted exactly), mapped back
to the original size, merged across variants and runs (mean or ASME), and written as 8-bit PNGs
by background threads, so the device does not wait on disk.

The settings are a :class:`PredictOptions` (as given; None means "the first run's recipe,
else the default", resolved once by :func:`resolve_inference`); a :class:`Predictor` holds one
inference engine per run (:mod:`nerveseg_cli.inference.engines`: torch, or ONNX Runtime on exported
models) and predicts batches; :func:`predict` plans the images and writes the folder. This
module does not import torch: the torch engine does, when it loads a run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nerveseg_cli.classes import Classes, class_record, write_classes
from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.evaluation.postprocess import (
    PostProcess,
    label_map,
    resolve_class_posts,
    resolve_postprocess,
)
from nerveseg_cli.inference.asme import DEFAULT_BASE
from nerveseg_cli.inference.engines import Engine, check_engine, load_engines, read_model_info
from nerveseg_cli.inference.export import sidecar_path
from nerveseg_cli.inference.exported import is_exported
from nerveseg_cli.inference.merging import merge_stack
from nerveseg_cli.io.datasets import Sample, discover_with_columns, load_image, parse_folds
from nerveseg_cli.io.outputs import Outputs, write_label_map, write_mask
from nerveseg_cli.io.parallel import prefetch
from nerveseg_cli.io.probmaps import (
    PRESENCE_CSV,
    check_resume,
    probability_to_values,
    read_presence,
    write_prediction_json,
    write_presence,
    write_probability,
)
from nerveseg_cli.io.video import close_videos
from nerveseg_cli.lists import refuse_repeated_paths

# What predict does when neither the command line nor the first run's recipe (config.json
# "inference", written by `train --recipe`) says otherwise.
PREDICT_DEFAULTS: dict[str, Any] = {
    "tta": "none", "tta_merge": "mean", "merge": "mean", "asme_base": DEFAULT_BASE,
    "threshold": 0.5, "min_area": 0, "presence_threshold": None, "crf": None,
}
MERGES = ("mean", "asme")

# (flip height, flip width) per TTA variant; each flip is its own inverse.
TTA_VARIANTS = {
    "none": [(False, False)],
    "hflip": [(False, False), (False, True)],
    "flips": [(False, False), (False, True), (True, False), (True, True)],
}


def parse_part(text: str | None) -> tuple[int, int]:
    """``K/N`` (1-based K) -> (k, n); None -> (1, 1)."""
    if not text:
        return 1, 1
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise NervesegError(f"--part {text!r} is not K/N, e.g. 2/4") from None
    if not 1 <= k <= n:
        raise NervesegError(f"--part {text!r}: need 1 <= K <= N")
    return k, n


@dataclass(frozen=True)
class PredictOptions:
    """The options of ``nerveseg predict``, as given (the CLI's flags with ``_``).

    The first group left at None takes the first run's recipe value (config.json
    ``inference``), then :data:`PREDICT_DEFAULTS`; ``crf=True`` refines each map with the dense
    CRF (the recipe's parameters, or the CRF's defaults). ``postprocess`` gives threshold and
    min-area not given here. ``out_of_fold``: the image set is a split manifest and each image
    is predicted only by the run that validated on its fold (:func:`out_of_fold_groups`).
    ``engine``: ``torch``, or ``onnxruntime`` (runs may then be exported ``.onnx`` models; a
    run folder is exported on the fly); ``amp`` and ``channels_last`` are torch's.
    ``overlay_video``: the image set is a video; write its frames with the predicted outlines
    there, at its frame rate (:class:`_OverlayWriter`).
    """

    tta: str | None = None
    tta_merge: str | None = None
    merge: str | None = None
    asme_base: float | None = None
    threshold: float | None = None
    min_area: int | None = None
    presence_threshold: float | None = None
    crf: bool | None = None
    postprocess: str | Path | None = None
    presence_from: str | Path | None = None
    masks: str | Path | None = None
    part: str | None = None
    out_of_fold: bool = False
    batch_size: int = 8
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    workers: int = 4
    engine: str = "torch"
    overlay_video: str | Path | None = None


@dataclass(frozen=True)
class InferenceOptions:
    """The prediction options after resolution (explicit > first run's recipe > defaults)."""

    tta: str
    tta_merge: str
    merge: str
    asme_base: float
    presence_threshold: float | None
    crf: dict[str, Any] | None  # CrfParams fields, or None for no CRF
    post: PostProcess
    from_recipe: list[str]  # which options came from the run's recipe

    def validate(self) -> InferenceOptions:
        check_inference_values({"tta": self.tta, "tta_merge": self.tta_merge,
                                "merge": self.merge, "asme_base": self.asme_base,
                                "presence_threshold": self.presence_threshold})
        return self

    def crf_params(self) -> Any:
        """The validated CrfParams, or None without the CRF."""
        if self.crf is None:
            return None
        from nerveseg_cli.inference.crf import CrfParams

        return CrfParams(**self.crf).validate()


def check_inference_values(values: dict[str, Any], where: str | None = None) -> None:
    """Refuse prediction settings no run can use: from the command line, or (``where``) a
    recipe's ``predict`` part."""
    def name(key: str) -> str:
        return f"{where}: predict.{key}" if where else "--" + key.replace("_", "-")

    choices = {"tta": tuple(TTA_VARIANTS), "tta_merge": MERGES, "merge": MERGES}
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise NervesegError(f"{name(key)} {values[key]!r}: use {', '.join(allowed)}")
    ranges = {"asme_base": (lambda v: v > 0, "a positive number"),
              "threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
              "presence_threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
              "min_area": (lambda v: v >= 0 and v == int(v), "a whole number >= 0")}
    for key, (ok, need) in ranges.items():
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not math.isfinite(value)
                                  or not ok(value)):
            raise NervesegError(f"{name(key)} {value!r}: must be {need}")


def resolve_inference(given: dict[str, Any], recipe: dict[str, Any],
                      postprocess: str | Path | None = None) -> InferenceOptions:
    """Resolve each option: the given value unless None, else the recipe's (config.json
    ``inference`` of the first run), else :data:`PREDICT_DEFAULTS`. ``crf`` may be given as a
    bool: True uses the recipe's CRF parameters (or the CRF's defaults), False turns it off.
    With ``postprocess``, threshold and min-area not given come from that file instead."""
    from_recipe = []

    def pick(key: str) -> Any:
        if given.get(key) is not None:
            return given[key]
        if recipe.get(key) is not None:
            from_recipe.append(key)
            return recipe[key]
        return PREDICT_DEFAULTS[key]

    if postprocess is not None:
        post = resolve_postprocess(given.get("threshold"), given.get("min_area"), postprocess)
    else:
        post = resolve_postprocess(pick("threshold"), pick("min_area"), None)
    crf = given.get("crf")
    if crf is None:
        params = recipe.get("crf")
        if params:
            from_recipe.append("crf")
    elif crf:
        params = recipe.get("crf") or _default_crf()
    else:
        params = None
    return InferenceOptions(pick("tta"), pick("tta_merge"), pick("merge"),
                            float(pick("asme_base")), pick("presence_threshold"),
                            dict(params) if params else None, post, from_recipe).validate()


def _default_crf() -> dict[str, Any]:
    from nerveseg_cli.inference.crf import CrfParams

    return asdict(CrfParams())


@dataclass
class PredictResult:
    written: int
    skipped: int
    seconds: float
    presence: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else float("nan")


def _common_classes(runs: Sequence[Engine]) -> Classes | None:
    """The runs' classes, which must be the same (None: binary runs)."""
    first = runs[0].info
    for run in runs[1:]:
        if (run.info.classes is None) != (first.classes is None) or \
                run.info.multilabel != first.multilabel:
            raise NervesegError(f"{run.path} and {first.path} are not the same kind of task "
                                "(binary, softmax or multilabel classes)")
        if run.info.classes is not None:
            run.info.classes.check_same(first.classes, str(run.path), str(first.path))
    return first.classes


def out_of_fold_groups(runs: Sequence[Engine], images: str | Path,
                       samples: Sequence[Sample], folds: Sequence[str]
                       ) -> tuple[list[tuple[list[int], list[Sample]]], dict[str, str]]:
    """For ``--out-of-fold``: which runs predict which images of a split manifest.

    Each run validated on one fold (``train --fold K``, recorded in config.json); an image of
    fold K is predicted by that run alone, so no image is predicted by a model that trained on
    it. Rows left out of every fold (``-1``, ``split --balance``) were seen by no run and are
    predicted by all of them. Returns (run indices, samples) groups in manifest order of their
    first image, and the fold -> run mapping for prediction.json."""
    by_fold = _runs_by_fold(runs, images)
    sample_folds = parse_folds(samples, folds).tolist()
    lacking = sorted({f for f in sample_folds if f >= 0} - set(by_fold))
    if lacking:
        raise NervesegError(f"{images}: no run validated on fold(s) "
                            f"{', '.join(map(str, lacking))} (runs given validated on "
                            f"{', '.join(map(str, sorted(by_fold)))})")
    groups: dict[tuple[int, ...], list[Sample]] = {}
    for sample, fold in zip(samples, sample_folds, strict=True):
        key = (by_fold[fold],) if fold >= 0 else tuple(range(len(runs)))
        groups.setdefault(key, []).append(sample)
    mapping = {str(k): str(runs[i].path) for k, i in sorted(by_fold.items())}
    return [(list(key), members) for key, members in groups.items()], mapping


def _runs_by_fold(runs: Sequence[Engine], images: str | Path) -> dict[int, int]:
    """Fold K -> index of the run that validated on it (one run per fold)."""
    by_fold: dict[int, int] = {}
    for index, run in enumerate(runs):
        fold = str(run.info.training.get("fold", ""))
        try:
            k = int(fold)
        except ValueError:
            raise NervesegError(f"{run.path}: trained with --fold {fold or '?'}, so it has no "
                                "held-out fold; --out-of-fold needs runs trained with --fold K"
                                ) from None
        if k in by_fold:
            raise NervesegError(f"{run.path} and {runs[by_fold[k]].path} both validated on "
                                f"fold {k}; --out-of-fold needs one run per fold")
        by_fold[k] = index
        trained_on = run.info.training.get("manifest")
        if trained_on and Path(trained_on).resolve() != Path(images).resolve():
            warn(f"{run.path} was trained on {trained_on}, not {images}: its predictions are "
                 "out-of-fold only if both files hold the same folds")
    return by_fold


# --------------------------------------------------------------------------------------------
# the predictor


class Predictor:
    """Loaded runs (one inference engine each) and resolved settings: turns batches of decoded
    images into one merged probability map (and presence) per image."""

    def __init__(self, runs: Sequence[str | Path], options: PredictOptions) -> None:
        if not runs:
            raise NervesegError("predict needs at least one run folder")
        refuse_repeated_paths(runs, "run", "runs are merged with equal weights, each once")
        self.options = options
        check_engine(options.engine)
        first = read_model_info(runs[0])
        # several classes: a postprocess.json may give each class its own threshold and min
        # area (score --sweep-* writes that form); the label-map --masks apply them per class
        several = first.classes is not None and not first.classes.binary
        self.settings = resolve_inference(
            {"tta": options.tta, "tta_merge": options.tta_merge, "merge": options.merge,
             "asme_base": options.asme_base, "threshold": options.threshold,
             "min_area": options.min_area, "presence_threshold": options.presence_threshold,
             "crf": options.crf}, first.inference, None if several else options.postprocess)
        self.class_posts = resolve_class_posts(
            first.classes.foreground, options.threshold, options.min_area,
            options.postprocess) if several and options.postprocess else None
        self.crf_params = self.settings.crf_params()
        if options.batch_size < 1:
            raise NervesegError("--batch-size must be at least 1")
        self.external_presence = read_presence(options.presence_from) \
            if options.presence_from else None
        self.runs = load_engines(runs, options.engine, options.device, options.amp,
                                 options.channels_last)
        self.classes = _common_classes(self.runs)
        if self.classes is not None and self.external_presence is not None:
            raise NervesegError("--presence-from takes one presence per image; the runs have "
                                "several classes (each class's presence comes from the runs)")
        self._check_presence_source()

    def _check_presence_source(self) -> None:
        """Presence gating needs a presence: a run's head, or --presence-from."""
        if self.settings.presence_threshold is None or self.external_presence is not None or \
                any(run.info.has_presence for run in self.runs):
            return
        if self.options.presence_threshold is not None:
            raise NervesegError("--presence-threshold needs a presence probability, but no run "
                                "has a presence head (train --presence-head); give "
                                "--presence-from FILE")
        warn(f"{self.runs[0].path}: its recipe gates by presence, but no run has a presence "
             "head: maps are not gated")

    def run_batch(self, run: Engine, images: Sequence[np.ndarray]
                  ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """One run on a batch of images: per image a (V, H, W) float32 stack at the original
        size (V = TTA variants; (V, K, H, W) with several classes), and presence
        probabilities (N, V) or None."""
        return run.run_batch(images, TTA_VARIANTS[self.settings.tta])

    def predict_batch(self, members: Sequence[int], samples: Sequence[Sample],
                      images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, float | None]]:
        """The merged probability map and presence (None without one) of each image, by the
        runs ``members``: TTA variants merged per run, then the runs merged, then gated."""
        settings = self.settings
        per_run = [self.run_batch(self.runs[m], images) for m in members]
        if self.classes is not None:
            return [self._merge_classes([stacks[i] for stacks, _ in per_run],
                                        [p[i] for _, p in per_run if p is not None])
                    for i in range(len(samples))]
        results = []
        for i, sample in enumerate(samples):
            merged = [self._merge(stacks[i], settings.tta_merge) for stacks, _ in per_run]
            prob = self._merge(np.stack(merged), settings.merge)
            presence = self._presence(sample.id, [p[i] for _, p in per_run if p is not None])
            if settings.presence_threshold is not None and presence is not None and \
                    presence < settings.presence_threshold:
                prob = np.zeros_like(prob)
            results.append((prob, presence))
        return results

    def _merge_classes(self, stacks: list[np.ndarray], presences: list[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """One image of several classes: each class merged over TTA variants, then runs, then
        gated by its own presence; ((K, H, W) maps, (K,) presence or None)."""
        settings = self.settings
        maps = np.stack([
            self._merge(np.stack([self._merge(stack[:, k], settings.tta_merge)
                                  for stack in stacks]), settings.merge)
            for k in range(stacks[0].shape[1])])
        presence = np.mean([p.mean(axis=0) for p in presences], axis=0) if presences \
            else None
        if settings.presence_threshold is not None and presence is not None:
            maps[presence < settings.presence_threshold] = 0.0
        return maps, presence

    def _merge(self, stack: np.ndarray, how: str) -> np.ndarray:
        return merge_stack(stack, how, threshold=self.settings.post.threshold,
                           base=self.settings.asme_base)[0]

    def _presence(self, sample_id: str, per_run: list[np.ndarray]) -> float | None:
        """The image's presence: from --presence-from, else the mean over runs of each run's
        mean over TTA variants."""
        if self.external_presence is not None:
            return self.external_presence[sample_id]
        return float(np.mean([float(p.mean()) for p in per_run])) if per_run else None


# --------------------------------------------------------------------------------------------
# the command


def predict(runs: Sequence[str | Path], images: str | Path, out: str | Path,
            options: PredictOptions = PredictOptions(), *, resume: bool = False,
            overwrite: bool = False,
            progress: Callable[[int], None] | None = None) -> PredictResult:
    """Predict every image of a set with one or more runs and write a probability folder
    (``ID.png`` per image, ``presence.csv`` with a presence head, ``prediction.json``).

    ``resume`` skips ids already written in ``out`` (writes are atomic, so a file there is
    complete) and refuses other options than the folder was written with."""
    k, n = parse_part(options.part)
    _check_overlay_video(options, images, resume, (k, n))
    # the output folders' own checks (links out of them included) before the runs are read
    Outputs.preflight([*runs, images], folders=[out, options.masks], overwrite=overwrite,
                      resume=resume)
    predictor = Predictor(runs, options)
    groups, fold_runs = _plan(predictor, images, k, n)
    samples = [s for _, group in groups for s in group]
    roles, record = _provenance(predictor, runs, images, (k, n), fold_runs)
    if resume and not overwrite:
        check_resume(out, "predict", roles, record, ignore=("part", "from_recipe", "engine"))
    done = _done_ids(Path(out), predictor.classes) if resume else set()
    groups = [(members, [s for s in group if s.id not in done]) for members, group in groups]
    todo = [s for _, group in groups for s in group]
    _check_external_presence(predictor, todo)
    # an image's folder is an input; a video's frames come from the file alone
    inputs = [*runs, *(sidecar_path(r) for r in runs if is_exported(r)), images,
              options.presence_from, options.postprocess,
              *{s.image.parent for s in samples if s.image is not None and s.frame is None}]
    with Outputs(inputs) as outputs, contextlib.ExitStack() as cleanup:
        cleanup.callback(close_videos)
        # --part writers share the folders, each locking its own part (docs/predict.md)
        out = outputs.resumable_folder(out, overwrite=overwrite, resume=resume,
                                       resumable=_has_maps(Path(out)), share=(k, n))
        masks_dir = outputs.resumable_folder(options.masks, overwrite=overwrite,
                                             resume=resume,
                                             resumable=_has_maps(Path(options.masks)),
                                             share=(k, n)) \
            if options.masks else None
        folders = _class_folders(outputs, out, predictor.classes, roles, record)
        presence = {name: read_presence(folder / PRESENCE_CSV)
                    if resume and (folder / PRESENCE_CSV).is_file() else {}
                    for name, folder in folders.items()}
        writer = _MapWriter(folders, masks_dir, predictor)
        if options.overlay_video is not None:
            writer.overlay = cleanup.enter_context(_OverlayWriter.open(
                outputs.file(options.overlay_video, overwrite=overwrite), Path(images)))
        write_prediction_json(out, "predict", roles, record,
                              extra=class_record(predictor.classes))
        started = time.perf_counter()
        _predict_groups(predictor, groups, writer, presence, progress)
        for name, folder in folders.items():
            if presence[name]:
                _write_presence(folder, presence[name], shared=n > 1)
    flat = presence[""] if "" in presence else next(iter(presence.values()), {})
    return PredictResult(len(todo), len(samples) - len(todo), time.perf_counter() - started,
                         flat)


def _write_presence(folder: Path, presence: dict[str, float], shared: bool) -> None:
    """``presence.csv``; ``shared`` (--part writers of one folder): merged, under the folder's
    lock, with the rows the other parts wrote, which would be lost otherwise."""
    from nerveseg_cli.io.locks import folder_section

    if not shared:
        write_presence(folder / PRESENCE_CSV, presence)
        return
    with folder_section(folder):
        path = folder / PRESENCE_CSV
        others = read_presence(path) if path.is_file() else {}
        write_presence(path, {**others, **presence})


def _class_folders(outputs: Outputs, out: Path, classes: Classes | None,
                   roles: dict[str, Any], record: dict[str, Any]) -> dict[str, Path]:
    """Where each class's maps go: OUT itself for a binary task (key ""), else OUT/<class>/
    (each a probability folder of its own, with its prediction.json) and OUT/classes.json."""
    if classes is None:
        return {"": out}
    folders = dict(zip(classes.foreground, outputs.subfolders(out, classes.foreground),
                       strict=True))  # all checked before the first write
    write_classes(out, classes)
    for name, folder in folders.items():
        write_prediction_json(folder, "predict", roles, record,
                              extra={"class": name, **class_record(classes)})
    return folders


def _done_ids(out: Path, classes: Classes | None) -> set[str]:
    """Ids whose maps are all written (every class's, for several classes)."""
    if classes is None:
        return {p.stem for p in out.glob("*.png")}
    found = [{p.stem for p in (out / name).glob("*.png")} for name in classes.foreground]
    return set.intersection(*found) if found else set()


def _has_maps(folder: Path) -> Callable[[set[str]], bool]:
    """Whether a failed run left complete maps a --resume can keep (in the folder, or in its
    class folders)."""
    def resumable(added: set[str]) -> bool:
        return any(name.endswith(".png") or any((folder / name).glob("*.png"))
                   for name in added)

    return resumable


def _predict_groups(predictor: Predictor, groups: list[tuple[list[int], list[Sample]]],
                    writer: _MapWriter, presence: dict[str, dict[str, float]],
                    progress: Callable[[int], None] | None) -> None:
    """Predict each group with its runs, batch by batch, decoding the next batch while the
    device works and writing in the pool's threads."""
    batch_size = predictor.options.batch_size
    with ThreadPoolExecutor(max_workers=max(1, predictor.options.workers)) as pool:
        writer.pool = pool
        for members, group in groups:
            batches = [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
            for batch, decoded in prefetch(batches, lambda b: _decode(b, pool)):
                for sample, image, (prob, value) in zip(
                        batch, decoded, predictor.predict_batch(members, batch, decoded),
                        strict=True):
                    if value is not None:
                        for name, number in zip(presence, np.atleast_1d(value), strict=True):
                            presence[name][sample.id] = float(number)
                    writer.submit(sample.id, prob, image)
                if progress:
                    progress(len(batch))
        writer.finish()


def _plan(predictor: Predictor, images: str | Path, k: int, n: int
          ) -> tuple[list[tuple[list[int], list[Sample]]], dict[str, str] | None]:
    """(run indices, samples) groups to predict, in set order: every run on every image, or
    one run per fold with --out-of-fold; then the K-th of N deterministic shares."""
    samples, columns = discover_with_columns(images, videos=True)
    fold_runs: dict[str, str] | None = None
    if predictor.options.out_of_fold:
        if "fold" not in columns:
            raise NervesegError(f"{images}: --out-of-fold needs a split manifest (a fold "
                                "column, from `nerveseg split`)")
        groups, fold_runs = out_of_fold_groups(predictor.runs, images, samples,
                                               columns["fold"])
    else:
        groups = [(list(range(len(predictor.runs))), list(samples))]
    share = {s.id for s in samples[k - 1::n]}
    return [(members, [s for s in group if s.id in share]) for members, group in groups], \
        fold_runs


def _check_external_presence(predictor: Predictor, todo: Sequence[Sample]) -> None:
    external = predictor.external_presence
    if external is None:
        return
    absent = [s.id for s in todo if s.id not in external]
    if absent:
        raise NervesegError(f"{predictor.options.presence_from}: no presence for {len(absent)} "
                            f"images (first: {', '.join(absent[:5])})")


def _provenance(predictor: Predictor, runs: Sequence[str | Path], images: str | Path,
                part: tuple[int, int], fold_runs: dict[str, str] | None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inputs and resolved options prediction.json records (and --resume compares)."""
    settings, options = predictor.settings, predictor.options
    recipe = {"run": str(runs[0]), "options": settings.from_recipe} \
        if settings.from_recipe else None
    return {"runs": [str(r) for r in runs], "images": images}, {
        "tta": settings.tta, "tta_merge": settings.tta_merge, "merge": settings.merge,
        "asme_base": settings.asme_base, "threshold": settings.post.threshold,
        "min_area": settings.post.min_area, "presence_threshold": settings.presence_threshold,
        "presence_from": str(options.presence_from) if options.presence_from else None,
        "crf": settings.crf, "part": f"{part[0]}/{part[1]}", "out_of_fold": fold_runs,
        "from_recipe": recipe, "engine": options.engine,
        # several classes with a postprocess.json: each class's threshold and min area
        **({"postprocess": {name: {"threshold": post.threshold, "min_area": post.min_area}
                            for name, post in predictor.class_posts.items()}}
           if predictor.class_posts else {})}


def _decode(batch: Sequence[Sample], pool: ThreadPoolExecutor) -> tuple[list, list]:
    """A batch and its decoded images, decoded in parallel in ``pool``; a video's frames in
    order, by its one decoder (out of order, each frame would cost a seek)."""
    if any(s.frame is not None for s in batch):
        return list(batch), [load_image(s) for s in batch]
    return list(batch), list(pool.map(load_image, batch))


def _check_overlay_video(options: PredictOptions, images: str | Path, resume: bool,
                         part: tuple[int, int]) -> None:
    """--overlay-video needs a whole video, predicted in one go (its frames are written in
    order, once)."""
    if options.overlay_video is None:
        return
    from nerveseg_cli.io.video import FOURCC, is_video

    video = Path(options.overlay_video)
    if not is_video(images):
        raise NervesegError(f"--overlay-video {video}: the image set {images} is not a video "
                            "file (mp4, avi, ...); overlay videos are made from videos")
    if video.suffix.lower() not in FOURCC:
        raise NervesegError(f"--overlay-video {video}: name it .mp4 or .avi (also "
                            f"{', '.join(s for s in sorted(FOURCC) if s not in ('.mp4', '.avi'))})")
    if resume:
        raise NervesegError("--overlay-video writes every frame in one pass; it cannot "
                            "--resume (predict again without --resume)")
    if part != (1, 1):
        raise NervesegError(f"--overlay-video needs the whole video; --part {part[0]}/{part[1]} "
                            "predicts a share of its frames")


class _MapWriter:
    """Refines (CRF), quantises and writes maps in the pool's threads, with at most a few
    writes in flight per thread (bounds memory)."""

    def __init__(self, folders: dict[str, Path], masks_dir: Path | None,
                 predictor: Predictor) -> None:
        self.folders, self.masks_dir = folders, masks_dir
        self.post, self.crf_params = predictor.settings.post, predictor.crf_params
        self.class_posts = list(predictor.class_posts.values()) \
            if predictor.class_posts else None
        self.keep = 4 * max(1, predictor.options.workers)
        self.pool: ThreadPoolExecutor | None = None
        self.pending: list[tuple[Future, np.ndarray | None]] = []
        self.overlay: _OverlayWriter | None = None

    def submit(self, sample_id: str, prob: np.ndarray, image: np.ndarray) -> None:
        assert self.pool is not None
        self.pending.append((self.pool.submit(self._write, sample_id, prob,
                                              image if self.crf_params else None),
                             image if self.overlay is not None else None))
        self._drain(self.keep)

    def finish(self) -> None:
        self._drain(0)

    def _drain(self, keep: int) -> None:
        """Wait for the oldest writes; the overlay video takes their labels in frame order."""
        while len(self.pending) > keep:
            future, image = self.pending.pop(0)
            labels = future.result()
            if self.overlay is not None and image is not None:
                self.overlay.write(image, labels)

    def _write(self, sample_id: str, prob: np.ndarray, image: np.ndarray | None
               ) -> np.ndarray:
        """Write one image's files; returns its labels (0 background, k class k), which the
        masks hold and the overlay video outlines."""
        if self.crf_params is not None and image is not None:
            from nerveseg_cli.inference.crf import crf_refine, crf_refine_classes

            prob = crf_refine(np.clip(prob, 0.0, 1.0), image, self.crf_params) \
                if prob.ndim == 2 else crf_refine_classes(prob, image, self.crf_params)
        values = probability_to_values(np.clip(prob, 0.0, 1.0))
        labels = self.post.apply(values).astype(np.uint8) if values.ndim == 2 else \
            label_map(values, self.class_posts or [self.post] * values.shape[0])
        # The mask first: a PNG in OUT (in the last class folder) marks the image done.
        if self.masks_dir is not None:
            if values.ndim == 2:
                write_mask(self.masks_dir / f"{sample_id}.png", labels.astype(bool))
            else:
                write_label_map(self.masks_dir / f"{sample_id}.png", labels)
        for class_values, folder in zip(values.reshape(-1, *values.shape[-2:]),
                                        self.folders.values(), strict=True):
            write_probability(folder / f"{sample_id}.png", class_values)
        return labels


class _OverlayWriter:
    """``--overlay-video``: each frame with its predicted outlines (a colour per class), in
    frame order, at the input video's frame rate, into the staged output file."""

    def __init__(self, video: Any) -> None:
        self.video = video

    @classmethod
    @contextlib.contextmanager
    def open(cls, staged: Path, source: Path) -> Iterator[_OverlayWriter]:
        from nerveseg_cli.io.video import OverlayVideo, video_format

        video = OverlayVideo(staged, *video_format(source))
        try:
            yield cls(video)
        finally:
            video.close()

    def write(self, image: np.ndarray, labels: np.ndarray) -> None:
        from nerveseg_cli.drawing import outline_frame

        self.video.write(outline_frame(image, labels))
