"""Models: one place that turns a model config into a network (:func:`build_model`).

Every architecture is registered (:mod:`.registry`) under a name with a builder ``(ModelConfig)
-> SegmentationNet`` and an :class:`ArchSpec` saying which options it takes. All
segmentation_models_pytorch architectures, and seed 002's ``ragcm`` on smp's U-Net, are
registered by :mod:`.smp_models` (smp, timm and torchvision are imported only when a name the
custom ones do not hold is asked for: seconds a custom network does not need); the custom ones
(docs/models.md) live one family per module (``unet_plain``, ``attention``, ``r2unet``,
``inception``, ``fcn``) and register themselves when this module first imports them. Every
model returned by :func:`build_model` is a :class:`SegmentationNet`: ``forward(x)`` gives
``(mask_logits, presence_logits or None)``.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import importlib

from torch import nn

from nerveseg_cli.errors import NervesegError, suggest
from nerveseg_cli.models.registry import (
    EXTRA_OPTIONS,
    ArchSpec,
    ModelConfig,
    SegmentationNet,
    builder,
    extra_option,
    is_registered,
    option_flag,
    register,
    registered_specs,
)
from nerveseg_cli.models.smp_models import register_smp, smp_encoders
from nerveseg_cli.models.weights import load_encoder_weights, offline_weights_error

__all__ = ["EXTRA_OPTIONS", "ArchSpec", "ModelConfig", "SegmentationNet", "arch_spec",
           "architectures", "build_model", "check_model_config", "count_parameters",
           "extra_option", "load_encoder_weights", "offline_weights_error", "option_flag",
           "register", "smp_encoders"]

# Modules holding the custom architectures, imported on first use (they register themselves).
CUSTOM_MODULES = ("unet_plain", "attention", "r2unet", "inception", "fcn")


def _register_custom() -> None:
    for module in CUSTOM_MODULES:
        importlib.import_module(f"nerveseg_cli.models.{module}")


def _register_all() -> None:
    _register_custom()
    register_smp()


def _register_for(arch: str) -> None:
    """Register what ``arch`` needs: the custom architectures (torch only), and smp's (seconds
    of imports: smp, timm, torchvision) only for a name they do not hold."""
    _register_custom()
    if not is_registered(arch):
        register_smp()


def architectures() -> list[str]:
    _register_all()
    return sorted(registered_specs())


def arch_spec(arch: str) -> ArchSpec:
    """The spec of a registered architecture; unknown names are a one-line error."""
    _register_for(arch)
    spec = registered_specs().get(arch)
    if spec is None:
        raise NervesegError(f"unknown architecture {arch!r}" + suggest(arch, architectures())
                            + f" (known: {', '.join(architectures())})")
    return spec


def check_model_config(config: ModelConfig) -> None:
    """Refuse options the architecture cannot take, naming the pair and who takes them."""
    spec = arch_spec(config.arch)
    for key, value in (config.extra or {}).items():
        if key not in EXTRA_OPTIONS:
            raise NervesegError(f"unknown model option {key!r} for {config.arch}")
        if value is not None and key not in spec.options:
            _register_all()  # the message names every architecture that takes it
            takers = sorted(name for name, s in registered_specs().items() if key in s.options)
            raise NervesegError(f"{option_flag(key, value)} does not apply to --arch "
                                f"{config.arch} (it works with: {', '.join(takers)})")
    if config.decoder_attention and not spec.decoder_attention:
        _register_all()
        supported = ", ".join(sorted(name for name, s in registered_specs().items()
                                     if s.decoder_attention))
        raise NervesegError(f"--decoder-attention {config.decoder_attention} does not apply "
                            f"to --arch {config.arch} (it works with: {supported})")
    if not spec.pretrained and config.encoder_weights not in (None, "", "none"):
        raise NervesegError(f"--encoder-weights {config.encoder_weights} does not apply to "
                            f"--arch {config.arch}: it is trained from scratch")


def build_model(config: ModelConfig) -> SegmentationNet:
    """Build the network a config describes (registered architectures only)."""
    check_model_config(config)  # also registers the architecture and rejects unknown names
    return builder(config.arch)(config)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
