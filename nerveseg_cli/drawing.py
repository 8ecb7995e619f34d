"""Pictures for people: mask outlines and score overlays (dedupe's montage, score's overlays)."""

from __future__ import annotations

import cv2
import numpy as np


def draw_outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int],
                 thickness: int = 1) -> np.ndarray:
    """Draw the outer outline of ``mask``'s regions on the BGR ``canvas``, in place."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, colour, thickness)
    return canvas


OVERLAY_COLOURS = {"gt": (0, 0, 255), "pred": (0, 255, 0), "both": (0, 255, 255)}  # BGR


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
            alpha: float = 0.45) -> np.ndarray:
    """Grayscale image with ground truth red, prediction green, overlap yellow (BGR)."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR).astype(np.float32)
    for key, region in (("gt", truth & ~pred), ("pred", pred & ~truth), ("both", truth & pred)):
        canvas[region] = (1 - alpha) * canvas[region] + alpha * np.array(OVERLAY_COLOURS[key])
    for mask, colour in ((truth, OVERLAY_COLOURS["gt"]), (pred, OVERLAY_COLOURS["pred"])):
        draw_outline(canvas, mask, colour)
    return canvas.round().astype(np.uint8)


def class_colour(index: int) -> tuple[int, int, int]:
    """A bright BGR colour for class ``index`` (1, 2, ...): the VOC colour map's hue, lifted so
    that it shows on dark ultrasound."""
    from nerveseg_cli.io.outputs import label_palette

    red, green, blue = label_palette()[3 * index: 3 * index + 3]
    return (min(255, 2 * blue), min(255, 2 * green), min(255, 2 * red))


def class_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                  alpha: float = 0.4) -> np.ndarray:
    """Grayscale image with each class in its colour: the prediction filled (translucent) and
    outlined thinly, the ground truth outlined thickly (BGR)."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR).astype(np.float32)
    for index in np.unique(np.concatenate([truth.ravel(), pred.ravel()])):
        if index == 0:
            continue
        colour = class_colour(int(index))
        region = pred == index
        canvas[region] = (1 - alpha) * canvas[region] + alpha * np.array(colour)
        draw_outline(canvas, region, colour, 1)
        draw_outline(canvas, truth == index, colour, 2)
    return canvas.round().astype(np.uint8)


def outline_frame(image: np.ndarray, labels: np.ndarray, thickness: int = 2) -> np.ndarray:
    """A grayscale frame with the outline of each predicted class in its colour (BGR): what
    ``predict --overlay-video`` writes, light enough to watch the anatomy under it."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for index in range(1, int(labels.max(initial=0)) + 1):
        region = labels == index
        if region.any():
            draw_outline(canvas, region, class_colour(index), thickness)
    return canvas
