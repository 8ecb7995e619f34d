"""``nerveseg predict``: run folders + images -> a probability folder.

Per batch: images are decoded in background threads, brought to each run's geometry on the
CPU, predicted on the device under every TTA variant (each flip inverted exactly), mapped back
to the original size, merged across variants and runs (mean or ASME), and written as 8-bit PNGs
by background threads, so the device does not wait on disk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerveseg_cli.asme import DEFAULT_BASE, asme_merge
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io import (
    Sample,
    discover_with_columns,
    prepare_output_dir,
    read_image,
    warn,
    write_mask,
)
from nerveseg_cli.models import SegmentationNet
from nerveseg_cli.probmaps import (
    PRESENCE_CSV,
    probability_to_values,
    read_presence,
    write_prediction_json,
    write_presence,
    write_probability,
)
from nerveseg_cli.rle import PostProcess, resolve_postprocess
from nerveseg_cli.runs import RunConfig, load_run, read_config
from nerveseg_cli.train.engine import resolve_amp, resolve_device

# What predict does when neither the command line nor the first run's recipe (config.json
# "inference", written by `train --recipe`) says otherwise.
PREDICT_DEFAULTS: dict[str, Any] = {
    "tta": "none", "tta_merge": "mean", "merge": "mean", "asme_base": DEFAULT_BASE,
    "threshold": 0.5, "min_area": 0, "presence_threshold": None, "crf": None,
}

# (flip height, flip width) per TTA variant; each flip is its own inverse.
TTA_VARIANTS = {
    "none": [(False, False)],
    "hflip": [(False, False), (False, True)],
    "flips": [(False, False), (False, True), (True, False), (True, True)],
}


def flip(x: torch.Tensor, variant: tuple[bool, bool]) -> torch.Tensor:
    dims = [d for d, on in zip((-2, -1), variant, strict=True) if on]
    return x.flip(dims) if dims else x


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


def merge_stack(stack: np.ndarray, how: str, threshold: float,
                base: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge (V, H, W) float probabilities of one image: mean or ASME; returns (map, weights)."""
    if stack.shape[0] == 1:
        return stack[0], np.ones(1, np.float32)
    if how == "asme":
        return asme_merge(stack, threshold, base)
    return stack.mean(axis=0), np.full(stack.shape[0], 1 / stack.shape[0], np.float32)


@dataclass
class LoadedRun:
    path: Path
    config: RunConfig
    model: SegmentationNet


@dataclass
class PredictResult:
    written: int
    skipped: int
    seconds: float
    presence: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else float("nan")


def load_runs(runs: Sequence[str | Path], device: torch.device,
              channels_last: bool) -> list[LoadedRun]:
    if not runs:
        raise NervesegError("predict needs at least one run folder")
    loaded = []
    for run in runs:
        config, model = load_run(run)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        loaded.append(LoadedRun(Path(run), config, model))
    channels = {r.config.model.in_channels for r in loaded}
    if len(channels) > 1:
        raise NervesegError("the runs disagree on input channels ("
                            + ", ".join(f"{r.path}: {r.config.model.in_channels}"
                                        for r in loaded) + ")")
    return loaded


@torch.no_grad()
def predict_images(run: LoadedRun, images: Sequence[np.ndarray], tta: str,
                   device: torch.device, amp: torch.dtype | None,
                   channels_last: bool) -> tuple[list[np.ndarray], np.ndarray | None]:
    """One run on a batch of equal-geometry images: per image a (V, H, W) float32 stack at the
    original size (V = TTA variants), and presence probabilities (N, V) or None."""
    config = run.config
    geometry = config.geometry
    batch = np.stack([geometry.forward(image) for image in images])
    x = torch.from_numpy(batch).to(device, non_blocking=True).unsqueeze(1).float() / 255
    x = (x - config.mean) / config.std
    if config.model.in_channels > 1:
        x = x.expand(-1, config.model.in_channels, -1, -1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    variants = TTA_VARIANTS[tta]
    probs, presences = [], []
    for variant in variants:
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            logits, presence = run.model(flip(x, variant))
        probs.append(flip(torch.sigmoid(logits.float()), variant))
        if presence is not None:
            presences.append(torch.sigmoid(presence.float()))
    stacked = torch.cat(probs, dim=1)  # (N, V, H', W')
    stacks = []
    for i, image in enumerate(images):
        back = geometry.backward(stacked[i:i + 1], *image.shape)[0]
        stacks.append(back.cpu().numpy())
    presence_array = torch.stack(presences, 1).cpu().numpy() if presences else None
    return stacks, presence_array


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
                            dict(params) if params else None, post, from_recipe)


def out_of_fold_groups(runs: Sequence[LoadedRun], images: str | Path,
                       samples: Sequence[Sample], folds: Sequence[str]
                       ) -> tuple[list[tuple[list[int], list[Sample]]], dict[str, str]]:
    """For ``--out-of-fold``: which runs predict which images of a split manifest.

    Each run validated on one fold (``train --fold K``, recorded in config.json); an image of
    fold K is predicted by that run alone, so no image is predicted by a model that trained on
    it. Rows left out of every fold (``-1``, ``split --balance``) were seen by no run and are
    predicted by all of them. Returns (run indices, samples) groups in manifest order of their
    first image, and the fold -> run mapping for prediction.json."""
    by_fold: dict[int, int] = {}
    for index, run in enumerate(runs):
        fold = str(run.config.training.get("fold", ""))
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
        trained_on = run.config.training.get("manifest")
        if trained_on and Path(trained_on).resolve() != Path(images).resolve():
            warn(f"{run.path} was trained on {trained_on}, not {images}: its predictions are "
                 "out-of-fold only if both files hold the same folds")
    try:
        sample_folds = [int(f) if f != "" else -1 for f in folds]
    except ValueError:
        raise NervesegError(f"{images}: the fold column must hold integers") from None
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


def _default_crf() -> dict[str, Any]:
    from dataclasses import asdict

    from nerveseg_cli.crf import CrfParams

    return asdict(CrfParams())


def predict(runs: Sequence[str | Path], images: str | Path, out: str | Path, *,
            tta: str | None = None, tta_merge: str | None = None, merge: str | None = None,
            asme_base: float | None = None, threshold: float | None = None,
            min_area: int | None = None, postprocess: str | Path | None = None,
            presence_threshold: float | None = None, presence_from: str | Path | None = None,
            crf: bool | None = None, masks: str | Path | None = None, batch_size: int = 8,
            device: str = "auto", amp: str = "auto", channels_last: bool = False,
            workers: int = 4, resume: bool = False, part: str | None = None,
            out_of_fold: bool = False, overwrite: bool = False,
            progress: Callable[[int], None] | None = None) -> PredictResult:
    """Predict every image of a set with one or more runs and write a probability folder.

    Options left at None take the first run's recipe values (config.json ``inference``), then
    :data:`PREDICT_DEFAULTS`; ``crf=True`` refines each map with the dense CRF (the recipe's
    parameters, or the CRF's defaults) before it is written. ``out_of_fold``: ``images`` is a
    split manifest and each image is predicted only by the run that validated on its fold
    (:func:`out_of_fold_groups`)."""
    if not runs:
        raise NervesegError("predict needs at least one run folder")
    options = resolve_inference(
        {"tta": tta, "tta_merge": tta_merge, "merge": merge, "asme_base": asme_base,
         "threshold": threshold, "min_area": min_area, "presence_threshold": presence_threshold,
         "crf": crf}, read_config(runs[0]).inference, postprocess)
    tta, tta_merge, merge = options.tta, options.tta_merge, options.merge
    asme_base, presence_threshold, post = (options.asme_base, options.presence_threshold,
                                           options.post)
    crf_params = None
    if options.crf is not None:
        from nerveseg_cli.crf import CrfParams

        crf_params = CrfParams(**options.crf).validate()
    if tta not in TTA_VARIANTS:
        raise NervesegError(f"--tta {tta!r}: use {', '.join(TTA_VARIANTS)}")
    for name, value in (("--tta-merge", tta_merge), ("--merge", merge)):
        if value not in ("mean", "asme"):
            raise NervesegError(f"{name} {value!r}: use mean or asme")
    if batch_size < 1:
        raise NervesegError("--batch-size must be at least 1")
    external_presence = read_presence(presence_from) if presence_from else None
    k, n = parse_part(part)
    torch_device = resolve_device(device)
    amp_dtype = resolve_amp(amp, torch_device)
    loaded = load_runs(runs, torch_device, channels_last)
    samples, columns = discover_with_columns(images)
    fold_runs: dict[str, str] | None = None
    if out_of_fold:
        if "fold" not in columns:
            raise NervesegError(f"{images}: --out-of-fold needs a split manifest (a fold "
                                "column, from `nerveseg split`)")
        groups, fold_runs = out_of_fold_groups(loaded, images, samples, columns["fold"])
    else:
        groups = [(list(range(len(loaded))), list(samples))]
    # a deterministic share for --part K/N
    share = {s.id for s in samples[k - 1::n]}
    groups = [(members, [s for s in group if s.id in share]) for members, group in groups]
    samples = [s for _, group in groups for s in group]
    out = prepare_output_dir(out, overwrite, resume)
    masks_dir = prepare_output_dir(masks, overwrite, resume) if masks else None
    done = {p.stem for p in out.glob("*.png")} if resume else set()
    todo = [s for s in samples if s.id not in done]
    groups = [(members, [s for s in group if s.id not in done]) for members, group in groups]
    if external_presence is not None:
        absent = [s.id for s in todo if s.id not in external_presence]
        if absent:
            raise NervesegError(f"{presence_from}: no presence for {len(absent)} images "
                                f"(first: {', '.join(absent[:5])})")
    presence: dict[str, float] = {}
    if resume and (out / PRESENCE_CSV).is_file():
        presence.update(read_presence(out / PRESENCE_CSV))
    write_prediction_json(out, "predict", {"runs": [str(r) for r in runs], "images": images},
                          {"tta": tta, "tta_merge": tta_merge, "merge": merge,
                           "asme_base": asme_base, "threshold": post.threshold,
                           "min_area": post.min_area, "presence_threshold": presence_threshold,
                           "presence_from": str(presence_from) if presence_from else None,
                           "crf": options.crf, "part": f"{k}/{n}",
                           "out_of_fold": fold_runs,
                           "from_recipe": {"run": str(runs[0]), "options": options.from_recipe}
                           if options.from_recipe else None})
    started = time.perf_counter()
    written = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[Future] = []
        for members, group in groups:
            for batch, decoded in _decoded_batches(group, batch_size, pool):
                per_run = [predict_images(loaded[m], decoded, tta, torch_device, amp_dtype,
                                          channels_last) for m in members]
                for i, sample in enumerate(batch):
                    merged_runs, run_presence = [], []
                    for stacks, presences in per_run:
                        prob, _ = merge_stack(stacks[i], tta_merge, post.threshold, asme_base)
                        merged_runs.append(prob)
                        if presences is not None:
                            run_presence.append(float(presences[i].mean()))
                    prob, _ = merge_stack(np.stack(merged_runs), merge, post.threshold,
                                          asme_base)
                    image_presence = external_presence[sample.id] \
                        if external_presence is not None \
                        else (float(np.mean(run_presence)) if run_presence else None)
                    if image_presence is not None:
                        presence[sample.id] = image_presence
                    if presence_threshold is not None and image_presence is not None and \
                            image_presence < presence_threshold:
                        prob = np.zeros_like(prob)
                    pending.append(pool.submit(_write_outputs, out, masks_dir, sample.id, prob,
                                               post, decoded[i] if crf_params else None,
                                               crf_params))
                written += len(batch)
                pending = _drain(pending, keep=4 * max(1, workers))
                if progress:
                    progress(len(batch))
        _drain(pending, keep=0)
    if presence:
        write_presence(out / PRESENCE_CSV, presence)
    return PredictResult(written, len(samples) - len(todo), time.perf_counter() - started,
                         presence)


def _write_outputs(out: Path, masks_dir: Path | None, sample_id: str, prob: np.ndarray,
                   post: PostProcess, image: np.ndarray | None = None,
                   crf_params: Any = None) -> None:
    """Refine with the CRF when asked, quantise, write (in a writer thread)."""
    if crf_params is not None and image is not None:
        from nerveseg_cli.crf import crf_refine

        prob = crf_refine(np.clip(prob, 0.0, 1.0), image, crf_params)
    values = probability_to_values(np.clip(prob, 0.0, 1.0))
    # The mask first: a PNG in OUT marks the image done for --resume.
    if masks_dir is not None:
        write_mask(masks_dir / f"{sample_id}.png", post.apply(values))
    write_probability(out / f"{sample_id}.png", values)


def _drain(pending: list[Future], keep: int) -> list[Future]:
    """Wait for the oldest writes until at most ``keep`` are in flight (bounds memory)."""
    while len(pending) > keep:
        pending.pop(0).result()
    return pending


def _decoded_batches(samples: Sequence, batch_size: int,
                     pool: ThreadPoolExecutor) -> Iterator[tuple[list, list[np.ndarray]]]:
    """Batches of samples with their decoded images; the next batch decodes in the pool."""
    batches = [list(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]

    def submit(batch: list) -> list[Future]:
        return [pool.submit(read_image, s.image) for s in batch]

    future = submit(batches[0]) if batches else []
    for index, batch in enumerate(batches):
        current = [f.result() for f in future]
        future = submit(batches[index + 1]) if index + 1 < len(batches) else []
        yield batch, current
