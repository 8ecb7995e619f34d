"""segmentation_models_pytorch's architectures in the registry (smp, timm and torchvision are
imported only when one is asked for: seconds a custom network does not need), with nerveseg's
extras on them (:mod:`.smp_extras`: sharp skips, RPA and APF, per-class decoders, decoder
activations)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from nerveseg_cli.errors import NervesegError, brief, suggest
from nerveseg_cli.models.registry import (
    Builder,
    ModelConfig,
    SegmentationNet,
    is_registered,
    register,
)
from nerveseg_cli.models.weights import load_encoder_weights, offline_weights_error


def smp_encoders() -> list[str]:
    from segmentation_models_pytorch.encoders import encoders

    return sorted(encoders)


def _check_encoder(name: str) -> None:
    if name.startswith("tu-"):
        import timm

        if not timm.list_models(name[3:]) and not timm.is_model(name[3:]):
            raise NervesegError(f"unknown timm encoder {name!r}"
                                + suggest(name[3:], timm.list_models()))
        return
    known = smp_encoders()
    if name not in known:
        raise NervesegError(f"unknown encoder {name!r}" + suggest(name, known)
                            + " (timm encoders: tu-NAME)")


_ATTENTION_ARCHS = {"unet", "unetplusplus"}
# Custom options on smp architectures (smp_extras.py): sharp skips on the U-Nets, seed 002's RPA
# and APF on unet, decoder activations everywhere.
_SMP_OPTIONS = {
    "unet": frozenset({"skip", "activation", "context", "fusion", "decoders"}),
    "unetplusplus": frozenset({"skip", "activation"}),
}


def build_smp(arch: str, config: ModelConfig) -> SegmentationNet:
    from nerveseg_cli.models.smp_extras import (
        PER_CLASS_DECODER_CHANNELS,
        check_smp_extras,
        extend_smp,
        per_class_decoders,
    )

    _check_encoder(config.encoder)
    kwargs: dict[str, Any] = {}
    if config.decoder_attention:
        if arch not in _ATTENTION_ARCHS:
            supported = ", ".join(sorted(_ATTENTION_ARCHS))
            raise NervesegError(f"--decoder-attention works with {supported}, not {arch}")
        kwargs["decoder_attention_type"] = config.decoder_attention
    if any(value is not None for value in (config.extra or {}).values()):
        check_smp_extras(arch, config.extra or {})
    per_class = per_class_decoders(config.extra)
    if per_class and config.classes <= 2:
        raise NervesegError("--decoders per-class needs several classes (--classes): a binary "
                            "model has one decoder")
    if per_class:
        kwargs["decoder_channels"] = PER_CLASS_DECODER_CHANNELS
    presence = {"aux_params": {"classes": config.presence_channels, "dropout": 0.2}} \
        if config.presence_head else {}
    logits = 1 if per_class else config.mask_channels
    net = _create_smp(arch, config, logits, {**kwargs, **presence})
    # the other classes' decoders and heads come from models built alike (smp's public API
    # builds decoders); their encoders, random and unused, are dropped by extend_smp
    foreground = config.classes - 1
    more = [_create_smp(arch, config, 1, kwargs, pretrained=False)
            for _ in range(foreground - 1)] if per_class else []
    if config.extra:
        net = extend_smp(net, config.extra, more, softmax=not config.multilabel)
    return SegmentationNet(net, 32, config.presence_head)


def _create_smp(arch: str, config: ModelConfig, logits: int, kwargs: dict[str, Any],
                pretrained: bool = True) -> nn.Module:
    """smp's model with ``logits`` output maps; the encoder weights of ``config`` if
    ``pretrained``."""
    import segmentation_models_pytorch as smp

    weights = config.encoder_weights if pretrained else "none"
    try:
        net = smp.create_model(arch, encoder_name=config.encoder,
                               encoder_weights="imagenet" if weights == "imagenet" else None,
                               in_channels=config.in_channels, classes=logits, **kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        raise NervesegError(f"cannot build {arch} with encoder {config.encoder}: "
                            f"{brief(exc)}") from None
    except Exception as exc:  # noqa: BLE001  network errors come in many types
        if weights != "imagenet":
            raise
        raise offline_weights_error(config.encoder, exc) from None
    if weights not in ("none", "imagenet", "", None):
        load_encoder_weights(net.encoder, Path(weights), config.in_channels)
    return net


def _smp_builder(arch: str) -> Builder:
    return lambda config: build_smp(arch, config)


def register_smp() -> None:
    """Register every smp architecture on first use (importing smp takes seconds)."""
    import segmentation_models_pytorch as smp

    for arch in smp.MODEL_ARCHITECTURES_MAPPING:
        if not is_registered(arch):
            register(arch, options=_SMP_OPTIONS.get(arch, frozenset({"activation"})),
                     encoder=True, pretrained=True,
                     decoder_attention=arch in _ATTENTION_ARCHS)(_smp_builder(arch))


# seed 002 (models/ragcm.py): smp's U-Net with both of its modules, whatever is asked
@register("ragcm", options=("skip", "activation", "context", "fusion"), encoder=True,
          pretrained=True)
def build_ragcm(config: ModelConfig) -> SegmentationNet:
    extra = dict(config.extra or {})
    for key, wanted in (("context", "rpa"), ("fusion", "apf")):
        if extra.get(key) not in (None, wanted):
            raise NervesegError(f"--{key} {extra[key]} does not apply to --arch ragcm (it always "
                                f"has {wanted}); use --arch unet for the ablation")
        extra[key] = wanted
    return build_smp("unet", replace(config, arch="unet", extra=extra))
