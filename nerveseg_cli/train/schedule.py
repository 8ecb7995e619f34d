"""The optimizer and the learning-rate schedule of a run (pure functions of its options)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.train.options import TrainOptions

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULERS = ("cosine", "step", "poly", "none")


def make_optimizer(options: TrainOptions,
                   params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    name = options.optimizer
    if name in ("adamw", "adam"):
        kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return _fused_if_supported(kind, list(params), lr=options.lr,
                                   weight_decay=options.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                               weight_decay=options.weight_decay, nesterov=options.momentum > 0)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=options.lr, momentum=options.momentum,
                                   weight_decay=options.weight_decay)
    raise NervesegError(f"--optimizer {name!r}: use {', '.join(OPTIMIZERS[:-1])} or rmsprop")


def _fused_if_supported(kind: type[torch.optim.Optimizer], params: list[torch.nn.Parameter],
                        **settings: float) -> torch.optim.Optimizer:
    """The fused implementation (one kernel over every parameter) where this torch has it for
    the parameters' device: on a 2-core CPU an AdamW step of U-Net/ResNet-18 takes 14 ms
    instead of 74 ms (benchmarks/bench_train.py). Same update, other rounding; older torch
    (no fused CPU kernels before 2.4) gets the default implementation."""
    try:
        return kind(params, fused=True, **settings)
    except (RuntimeError, TypeError, ValueError):
        return kind(params, **settings)


def lr_factor(options: TrainOptions, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warm-up, then the
    schedule over the remaining steps (step decay counts whole epochs)."""
    if options.scheduler not in SCHEDULERS:  # checked first: warm-up steps never reach it
        raise NervesegError(f"--scheduler {options.scheduler!r}: use "
                            f"{', '.join(SCHEDULERS[:-1])} or none")
    total = max(1, options.epochs * steps_per_epoch)
    warmup = int(round(options.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if options.scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if options.scheduler == "poly":
        return (1 - progress) ** options.poly_power
    if options.scheduler == "step":
        return options.step_gamma ** (step // steps_per_epoch)
    return 1.0


def make_scheduler(options: TrainOptions, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler applying :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(options, step, steps_per_epoch))
