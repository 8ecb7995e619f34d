"""Segmentation losses, all computed per image and averaged over the batch.

Per-image Dice matters for the Kaggle metric: an image without a nerve must cost something when
the model paints one. A batch-level Dice (or one that skips empty targets) lets false positives
on empty images go unpunished.

With several classes the per-class losses (Dice and Tversky of the softmax, every loss under
``--multilabel``) are summed over the foreground classes, not averaged. The cross-entropy's
gradient on each class's logit is already the binary one (p - y), so the sum gives each class
the loss mix of its own binary model, and one foreground class is the binary task exactly.
Averaging halved each class's Dice against the cross-entropy with two classes, and trailed two
binary models on both classes on usgra-seg (docs/performance.md, "Several classes").

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.lists import parse_list

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


def softmax_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-class soft Dice per image and foreground class (channel 0 is the background):
    an image without the class costs the probability mass painted there, as the Kaggle
    metric's empty-on-empty rule asks. Summed over the classes, averaged over the images: each
    class's Dice weighs what it weighs in a binary model of that class (module note)."""
    prob = torch.softmax(logits, dim=1)[:, 1:].flatten(2)
    target = target[:, 1:].flatten(2)
    inter = (prob * target).sum(2)
    return (1 - (2 * inter + SMOOTH) / (prob.sum(2) + target.sum(2) + SMOOTH)).sum(1).mean()


def softmax_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Categorical cross-entropy against (possibly smoothed) class probabilities."""
    return F.cross_entropy(logits, target)


def softmax_focal_loss(logits: torch.Tensor, target: torch.Tensor,
                       gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss: (1 - p_t)^gamma times the cross-entropy, per pixel."""
    log_prob = torch.log_softmax(logits, dim=1)
    ce = -(target * log_prob).sum(1)
    p_t = (target * log_prob.exp()).sum(1)
    return ((1 - p_t).clamp(min=0).pow(gamma) * ce).mean()


def softmax_tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
                         beta: float = 0.5) -> torch.Tensor:
    """Tversky loss per image and foreground class on the softmax probabilities, summed over
    the classes as :func:`softmax_dice_loss`."""
    prob = torch.softmax(logits, dim=1)[:, 1:].flatten(2)
    target = target[:, 1:].flatten(2)
    tp = (prob * target).sum(2)
    fp = (prob * (1 - target)).sum(2)
    fn = ((1 - prob) * target).sum(2)
    return (1 - (tp + SMOOTH / 2) / (tp + alpha * fp + beta * fn + SMOOTH / 2)).sum(1).mean()


def per_class(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A binary loss applied to each class channel as its own image (--multilabel), summed
    over the classes (the loss over every (image, class) pair times the class count)."""
    return lambda logits, target: logits.shape[1] * loss(logits.flatten(0, 1).unsqueeze(1),
                                                         target.flatten(0, 1).unsqueeze(1))


LOSSES = ("dice", "bce", "focal", "tversky", "lovasz")
LOSS_MODES = ("binary", "softmax", "multilabel")


def _table(mode: str, focal_alpha: float, focal_gamma: float, tversky_alpha: float,
           tversky_beta: float) -> dict[str, Callable[[torch.Tensor, torch.Tensor],
                                                      torch.Tensor]]:
    """The losses by name for a mode: binary (one sigmoid), softmax (``bce`` is the
    categorical cross-entropy there), multilabel (each class a binary image)."""
    if mode == "softmax":
        return {"dice": softmax_dice_loss, "bce": softmax_ce_loss, "ce": softmax_ce_loss,
                "focal": lambda x, y: softmax_focal_loss(x, y, focal_gamma),
                "tversky": lambda x, y: softmax_tversky_loss(x, y, tversky_alpha,
                                                             tversky_beta)}
    binary: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "dice": dice_loss,
        "bce": bce_loss,
        "focal": lambda x, y: focal_loss(x, y, focal_alpha, focal_gamma),
        "tversky": lambda x, y: tversky_loss(x, y, tversky_alpha, tversky_beta),
        "lovasz": lovasz_hinge_loss,
    }
    return binary if mode == "binary" else {k: per_class(v) for k, v in binary.items()}


def make_loss(spec: str, weights: Sequence[float] | None = None, *, focal_alpha: float = 0.25,
              focal_gamma: float = 2.0, tversky_alpha: float = 0.5, tversky_beta: float = 0.5,
              mode: str = "binary") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Combine losses named in ``spec`` ("bce+dice") with ``weights`` (default all 1), for the
    ``mode`` of the task (the loss options of ``nerveseg train``)."""
    table = _table(mode, focal_alpha, focal_gamma, tversky_alpha, tversky_beta)
    names = parse_list(spec, "--loss", str, what="a loss", sep="+",
                       usage=f"combine {', '.join(table)} with '+', each once")
    unknown = [n for n in names if n not in table]
    if "ce" in unknown and mode != "softmax":
        raise NervesegError(f"--loss {spec!r}: ce is the softmax cross-entropy of three classes "
                            "or more (--classes, without --multilabel); here use bce")
    if not names or unknown:
        raise NervesegError(f"--loss {spec!r}: unknown loss {', '.join(unknown) or '(none)'}"
                            f"{' for a softmax over several classes' if mode == 'softmax' else ''}"
                            f"; combine {', '.join(table)} with '+'")
    weights = list(weights) if weights else [1.0] * len(names)
    if len(weights) != len(names):
        raise NervesegError(f"--loss-weights has {len(weights)} values for {len(names)} losses")
    parts = [(table[name], float(w)) for name, w in zip(names, weights, strict=True)]

    def combined(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return sum(w * fn(logits, target) for fn, w in parts)  # type: ignore[return-value]

    return combined


def erosion_smoothed_targets(masks: torch.Tensor, kernel: int, epsilon: float) -> torch.Tensor:
    """Erosion mask smoothing (seed 000 §3.3): eroded interior -> 1 - eps, rim -> 1, else 0.

    Erosion with a square ``kernel`` is a min-pool, i.e. -maxpool(-mask), on the whole batch,
    channel by channel (one channel per class of a multi-class task).
    """
    if kernel <= 1 or epsilon <= 0:
        return masks
    pad = kernel // 2
    eroded = -F.max_pool2d(-masks, kernel, stride=1, padding=pad)
    eroded = eroded[..., : masks.shape[-2], : masks.shape[-1]]
    return masks - epsilon * eroded


def class_targets(labels: torch.Tensor, classes: int, multilabel: bool, kernel: int,
                  epsilon: float) -> torch.Tensor:
    """Training targets from (N, 1, H, W) label maps: one channel per class (softmax, the
    background's being what the others leave, so each pixel sums to 1) or per foreground class
    (multilabel), with erosion mask smoothing per class."""
    one_hot = F.one_hot(labels[:, 0].long(), classes).permute(0, 3, 1, 2).to(torch.float32)
    foreground = erosion_smoothed_targets(one_hot[:, 1:], kernel, epsilon)
    if multilabel:
        return foreground
    return torch.cat([1 - foreground.sum(1, keepdim=True), foreground], dim=1)
