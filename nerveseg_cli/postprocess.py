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
from typing import TYPE_CHECKING

import numpy as np

from nerveseg_cli.errors import NervesegError, brief
from nerveseg_cli.io.outputs import atomic_write_text, check_output_file
from nerveseg_cli.records import json_text

if TYPE_CHECKING:
    from nerveseg_cli.score import Sweep


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
    value among those its post-processing keeps there (threshold, then min area per class),
    else the background 0."""
    kept = np.stack([post.apply(values[k]) for k, post in enumerate(posts)])
    scores = np.where(kept, values.astype(np.int16), -1)
    best = scores.argmax(axis=0)
    return np.where(kept.any(axis=0), best + 1, 0).astype(np.uint8)


def load_postprocess(path: str | Path) -> PostProcess:
    """Read postprocess.json strictly: a threshold in [0, 1] and a whole min_area >= 0, both
    JSON numbers; anything else is an error naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        threshold, min_area = data["threshold"], data["min_area"]
    except FileNotFoundError:
        raise NervesegError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NervesegError(f"{path}: not a postprocess.json with threshold and min_area "
                            f"({brief(exc)})") from None
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise NervesegError(f"{path}: threshold {threshold!r} is not a number in [0, 1]")
    if not _is_number(min_area) or min_area < 0 or min_area != int(min_area) or \
            min_area > 2**31:
        raise NervesegError(f"{path}: min_area {min_area!r} is not a whole number of pixels "
                            ">= 0")
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
