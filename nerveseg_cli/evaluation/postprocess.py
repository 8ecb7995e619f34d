"""Post-processing: how a probability map becomes a mask, and the postprocess.json that
carries the choice from ``score --sweep-*`` to ``predict``, ``rle-encode`` and ``score``.

A pixel is foreground when ``value / 255 > threshold``; a mask with fewer than ``min_area``
foreground pixels is emptied (the whole image, not per component; docs/formats.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerveseg_cli.errors import NervesegError, brief, require_file
from nerveseg_cli.io.outputs import atomic_write_text, check_output_file
from nerveseg_cli.records import json_text


def threshold_level(threshold: float) -> int:
    """The 8-bit level L such that a map value v is foreground exactly when v > L.

    Foreground means v / 255 > threshold; the epsilon keeps 0.6 * 255 (= 152.99999...) at 153.
    """
    if not 0.0 <= threshold <= 1.0:
        raise NervesegError(f"threshold {threshold} is outside [0, 1]")
    return int(np.floor(threshold * 255 + 1e-9))


@dataclass(frozen=True)
class PostProcess:
    """How a probability map becomes a mask: v/255 > threshold, then area >= min_area."""

    threshold: float = 0.5
    min_area: int = 0

    def apply(self, value_map: np.ndarray) -> np.ndarray:
        return self.drop_small(value_map > threshold_level(self.threshold))

    def drop_small(self, mask: np.ndarray) -> np.ndarray:
        """Empty a mask whose foreground area is below ``min_area``."""
        if self.min_area > 0 and np.count_nonzero(mask) < self.min_area:
            return np.zeros_like(mask)
        return mask


def label_map(values: np.ndarray, posts: Sequence[PostProcess]) -> np.ndarray:
    """A label map from (K, H, W) 8-bit class maps: each pixel takes the class with the highest
    value among those its post-processing keeps there (threshold, then min area per class; the
    first such class on a tie), else the background 0."""
    labels = np.zeros(values.shape[1:], np.uint8)
    top = np.zeros(values.shape[1:], values.dtype)  # the value of the class taken so far
    # one class at a time on uint8 planes: several times faster than an argmax over (K, H, W)
    for k, post in enumerate(posts):
        take = post.apply(values[k]) & ((values[k] > top) | (labels == 0))
        labels = np.where(take, np.uint8(k + 1), labels)
        top = np.where(take, values[k], top)
    return labels


def load_postprocess(path: str | Path) -> PostProcess:
    """Read postprocess.json strictly: a threshold in [0, 1] and a whole min_area >= 0, both
    JSON numbers; anything else is an error naming the file."""
    path = require_file(Path(path), "a postprocess.json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "classes" in data and "threshold" not in data:
            raise NervesegError(f"{path}: a postprocess.json of several classes "
                                f"({', '.join(data['classes'])}); it applies to a folder of "
                                "those classes")
        return _post_from(data, path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NervesegError(f"{path}: not a postprocess.json with threshold and min_area "
                            f"({brief(exc)})") from None


def load_class_postprocess(path: str | Path, classes: Sequence[str]) -> dict[str, PostProcess]:
    """A postprocess.json of several classes (``{"classes": {NAME: {threshold, min_area}}}``),
    one PostProcess per class; a binary file applies to every class."""
    path = require_file(Path(path), "a postprocess.json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NervesegError(f"{path}: not valid JSON ({brief(exc)})") from None
    if isinstance(data, dict) and "classes" not in data:
        return dict.fromkeys(classes, load_postprocess(path))
    table = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise NervesegError(f"{path}: expected \"classes\": {{NAME: {{threshold, min_area}}}}")
    lacking = [name for name in classes if name not in table]
    if lacking:
        raise NervesegError(f"{path}: no post-processing for class {lacking[0]!r} (it has "
                            f"{', '.join(table)})")
    extra = [name for name in table if name not in classes]
    if extra:  # a sweep of other classes: the file describes other maps than these
        raise NervesegError(f"{path}: post-processing for class {extra[0]!r}, which the maps "
                            f"do not have (they have {', '.join(classes)})")
    return {name: _post_from(table[name], path, f"class {name}: ") for name in classes}


def resolve_class_posts(classes: Sequence[str], threshold: float | None,
                        min_area: int | None,
                        postprocess: str | Path | None) -> dict[str, PostProcess]:
    """Each class's post-processing: explicit options win over a postprocess.json (per class,
    or one for all), which wins over the defaults."""
    base = load_class_postprocess(postprocess, classes) if postprocess else \
        dict.fromkeys(classes, PostProcess())
    return {name: resolve_postprocess(threshold if threshold is not None else post.threshold,
                                      min_area if min_area is not None else post.min_area,
                                      None)
            for name, post in base.items()}


def _post_from(data: object, path: Path, where: str = "") -> PostProcess:
    """A PostProcess from {threshold, min_area}, strictly (see load_postprocess)."""
    try:
        threshold, min_area = data["threshold"], data["min_area"]  # type: ignore[index]
    except (KeyError, TypeError) as exc:
        raise NervesegError(f"{path}: {where}not a postprocess.json with threshold and "
                            f"min_area ({brief(exc)})") from None
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise NervesegError(f"{path}: {where}threshold {threshold!r} is not a number in [0, 1]")
    if not _is_number(min_area) or min_area < 0 or min_area != int(min_area) or \
            min_area > 2**31:
        raise NervesegError(f"{path}: {where}min_area {min_area!r} is not a whole number of "
                            "pixels >= 0")
    return PostProcess(float(threshold), int(min_area))


def _is_number(value: object) -> bool:
    """A finite JSON number (not a string, not true/false, not NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


def resolve_postprocess(threshold: float | None, min_area: int | None,
                        postprocess: str | Path | None) -> PostProcess:
    """Explicit options win over a postprocess.json, which wins over the defaults."""
    base = load_postprocess(postprocess) if postprocess else PostProcess()
    result = PostProcess(base.threshold if threshold is None else threshold,
                         base.min_area if min_area is None else min_area)
    threshold_level(result.threshold)
    if result.min_area < 0:
        raise NervesegError(f"min-area {result.min_area} is negative")
    return result


@dataclass
class Sweep:
    """Mean Dice over a grid of thresholds and min areas (``score --sweep-*``)."""

    thresholds: np.ndarray
    min_areas: np.ndarray
    mean_dice: np.ndarray  # (len(thresholds), len(min_areas))

    @property
    def best(self) -> tuple[float, int, float]:
        """(threshold, min_area, mean Dice) of the best cell; ties go to the first cell."""
        t, a = np.unravel_index(int(np.argmax(np.round(self.mean_dice, 12))),
                                self.mean_dice.shape)
        return float(self.thresholds[t]), int(self.min_areas[a]), float(self.mean_dice[t, a])


def write_postprocess(result: Sweep, path: str | Path, source: str, overwrite: bool) -> Path:
    """Write the best (threshold, min_area) pair as postprocess.json for rle-encode/predict."""
    path = check_output_file(path, overwrite)
    threshold, min_area, best = result.best
    atomic_write_text(path, json_text({
        "threshold": threshold, "min_area": min_area, "mean_dice": best,
        "chosen_from": source,
        "thresholds": [float(t) for t in result.thresholds],
        "min_areas": [int(a) for a in result.min_areas],
    }))
    return path
