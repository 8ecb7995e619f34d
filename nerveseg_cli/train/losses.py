"""Segmentation losses, all computed per image and averaged over the batch.

Per-image Dice matters for the Kaggle metric: an image without a nerve must cost something when
the model paints one. A batch-level Dice (or one that skips empty targets) lets false positives
on empty images go unpunished.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from nerveseg_cli.errors import NervesegError

SMOOTH = 1.0  # keeps Dice and Tversky defined on empty images: 1 - 1/(1 + predicted mass)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss per image: 1 - (2|P∩T| + s) / (|P| + |T| + s)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + SMOOTH) / (prob.sum(1) + target.sum(1) + SMOOTH)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss: alpha_t (1 - p_t)^gamma BCE; ``alpha < 0`` disables the weighting."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = (1 - p_t).pow(gamma) * bce
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
                 beta: float = 0.5) -> torch.Tensor:
    """Per-image Tversky loss; alpha weighs false positives, beta false negatives.

    The smoothing term is halved so that alpha = beta = 0.5 is exactly the Dice loss.
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    tp = (prob * target).sum(1)
    fp = (prob * (1 - target)).sum(1)
    fn = ((1 - prob) * target).sum(1)
    return (1 - (tp + SMOOTH / 2) / (tp + alpha * fp + beta * fn + SMOOTH / 2)).mean()


def lovasz_hinge_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász hinge (Berman et al. 2018) per image, the convex surrogate of IoU."""
    losses = []
    for image_logits, image_target in zip(logits.flatten(1), target.flatten(1), strict=True):
        labels = (image_target > 0.5).float()
        signs = 2 * labels - 1
        errors = 1 - image_logits * signs
        errors_sorted, order = torch.sort(errors, descending=True)
        labels_sorted = labels[order]
        total = labels_sorted.sum()
        intersection = total - labels_sorted.cumsum(0)
        union = total + (1 - labels_sorted).cumsum(0)
        jaccard = 1 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(F.relu(errors_sorted), jaccard))
    return torch.stack(losses).mean()


LOSSES = ("dice", "bce", "focal", "tversky", "lovasz")


def make_loss(spec: str, weights: Sequence[float] | None = None, *, focal_alpha: float = 0.25,
              focal_gamma: float = 2.0, tversky_alpha: float = 0.5,
              tversky_beta: float = 0.5) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Combine losses named in ``spec`` ("bce+dice") with ``weights`` (default all 1)."""
    names = [n.strip() for n in spec.split("+") if n.strip()]
    unknown = [n for n in names if n not in LOSSES]
    if not names or unknown:
        raise NervesegError(f"--loss {spec!r}: unknown loss {', '.join(unknown) or '(none)'}; "
                            f"combine {', '.join(LOSSES)} with '+'")
    weights = list(weights) if weights else [1.0] * len(names)
    if len(weights) != len(names):
        raise NervesegError(f"--loss-weights has {len(weights)} values for {len(names)} losses")
    table: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "dice": dice_loss,
        "bce": bce_loss,
        "focal": lambda x, y: focal_loss(x, y, focal_alpha, focal_gamma),
        "tversky": lambda x, y: tversky_loss(x, y, tversky_alpha, tversky_beta),
        "lovasz": lovasz_hinge_loss,
    }
    parts = [(table[name], float(w)) for name, w in zip(names, weights, strict=True)]

    def combined(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return sum(w * fn(logits, target) for fn, w in parts)  # type: ignore[return-value]

    return combined


def erosion_smoothed_targets(masks: torch.Tensor, kernel: int, epsilon: float) -> torch.Tensor:
    """Erosion mask smoothing (seed 000 §3.3): eroded interior -> 1 - eps, rim -> 1, else 0.

    Erosion with a square ``kernel`` is a min-pool, i.e. -maxpool(-mask), on the whole batch.
    """
    if kernel <= 1 or epsilon <= 0:
        return masks
    pad = kernel // 2
    eroded = -F.max_pool2d(-masks, kernel, stride=1, padding=pad)
    eroded = eroded[..., : masks.shape[-2], : masks.shape[-1]]
    return masks - epsilon * eroded
