"""One forward and backward of a blank batch before training, to learn what the network does
on this device before the first real step: which parameters get no gradient (DDP must be told,
or its second step fails), and whether ``--deterministic`` has a kernel for every operation
(CUDA has none for some backward passes, and says so only at the first backward).

It leaves the model as it found it: gradients cleared, buffers (batch-norm statistics)
restored; the random numbers it uses are moot, as the loop reseeds every step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from nerveseg_cli.errors import NervesegError

NO_DETERMINISTIC_KERNEL = "does not have a deterministic implementation"


def dry_step(model: torch.nn.Module, x: torch.Tensor,
             autocast: Callable[[], AbstractContextManager], arch: str) -> list[str]:
    """The names of the trainable parameters that a step on ``x`` leaves without a gradient.
    Raises a one-line error naming ``arch`` and the operation when deterministic algorithms
    are on and one has no deterministic kernel here."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        with autocast():
            logits, presence = model(x)
        total = logits.float().sum()
        if presence is not None:
            total = total + presence.float().sum()
        total.backward()
    except RuntimeError as exc:
        if NO_DETERMINISTIC_KERNEL not in str(exc):
            raise
        raise NervesegError(deterministic_message(arch, str(exc), x.device)) from None
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.train(was_training)
    unused = [name for name, p in model.named_parameters()
              if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused


def deterministic_message(arch: str, error: str, device: torch.device) -> str:
    """``--deterministic`` refused in one line: the architecture and the operation."""
    found = re.search(r"(\w+) " + NO_DETERMINISTIC_KERNEL, error)
    operation = found.group(1) if found else "an operation"
    return (f"--deterministic: --arch {arch} uses {operation}, which has no deterministic "
            f"kernel on {device.type.upper()}; train without --deterministic (seeded, but not "
            "bit-exact), or on the CPU")
