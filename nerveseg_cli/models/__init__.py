"""The model registry: one place that turns a model config into a network.

Every architecture is registered under a name with a builder ``(ModelConfig) -> nn.Module``
and an :class:`ArchSpec` saying which options it takes. All segmentation_models_pytorch
architectures are registered here, when a name the custom ones do not hold is first asked for
(importing smp, timm and torchvision takes seconds that a custom network does not need); the
custom ones (docs/models.md) live one family per module (``unet_plain``, ``attention``,
``r2unet``, ``inception``, ``fcn``, ``ragcm``) and register themselves through :func:`register`
when first needed. Every model returned by :func:`build_model` is a :class:`SegmentationNet`:
``forward(x)`` gives ``(mask_logits, presence_logits or None)``.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nerveseg_cli.errors import NervesegError, brief, require_file, suggest
from nerveseg_cli.records import DictRecord


@dataclass
class ModelConfig(DictRecord):
    """Everything needed to rebuild a network (stored in a run's config.json)."""

    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str = "none"  # none | imagenet | PATH (only used when building to train)
    in_channels: int = 1
    decoder_attention: str | None = None  # scse
    presence_head: bool = False
    extra: dict[str, Any] | None = None  # options of custom architectures
    classes: int = 2  # background included; 2 is the binary task (one sigmoid logit)
    multilabel: bool = False  # with more classes: one sigmoid per class, not a softmax

    def to_dict(self) -> dict[str, Any]:
        """The fields, but the class ones of a binary model (its config.json stays as it
        always was)."""
        data = super().to_dict()
        if self.classes == 2 and not self.multilabel:
            del data["classes"], data["multilabel"]
        return data

    @property
    def mask_channels(self) -> int:
        """Logit maps: 1 (binary), C (softmax over the classes), C - 1 (sigmoid per class)."""
        if self.classes <= 2:
            return 1
        return self.classes - 1 if self.multilabel else self.classes

    @property
    def presence_channels(self) -> int:
        """Presence logits: one per foreground class."""
        return max(1, self.classes - 1)


class SegmentationNet(nn.Module):
    """Wraps a network so that forward returns ``(mask_logits, presence_logits | None)``.

    ``size_multiple`` is the factor input height and width must be divisible by.
    """

    def __init__(self, net: nn.Module, size_multiple: int, has_presence: bool) -> None:
        super().__init__()
        self.net = net
        self.size_multiple = size_multiple
        self.has_presence = has_presence

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net(x)
        if isinstance(out, tuple):
            presence = out[1]
            # one class: (N,) as the binary task always had; several: (N, K)
            return out[0], presence.reshape(-1) if presence.shape[-1] == 1 else \
                presence.reshape(presence.shape[0], -1)
        return out, None


Builder = Callable[[ModelConfig], SegmentationNet]
_REGISTRY: dict[str, Builder] = {}

# ModelConfig.extra keys (the CLI flags --skip, --width, --batch-norm, --activation, --context,
# --fusion, --decoders); None or absent means "the architecture's own default".
EXTRA_OPTIONS = ("skip", "width", "batch_norm", "activation", "context", "fusion", "decoders")
# Modules holding the custom architectures, imported on first use (they register themselves).
CUSTOM_MODULES = ("unet_plain", "attention", "r2unet", "inception", "fcn", "ragcm")


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture accepts besides in_channels and the presence head."""

    options: frozenset[str]  # EXTRA_OPTIONS it takes
    encoder: bool  # takes --encoder (an smp / timm encoder)
    pretrained: bool  # takes --encoder-weights (its encoder or fixed backbone can be pretrained)
    decoder_attention: bool = False  # takes --decoder-attention scse


_SPECS: dict[str, ArchSpec] = {}


def register(name: str, *, options: Iterable[str] = (), encoder: bool = False,
             pretrained: bool = False) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` with the options it accepts (see :class:`ArchSpec`)."""
    spec = ArchSpec(frozenset(options), encoder, pretrained)
    unknown = spec.options - set(EXTRA_OPTIONS)
    if unknown:
        raise ValueError(f"{name}: unknown options {sorted(unknown)}")

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        _SPECS[name] = spec
        return builder

    return decorate


def _register_custom() -> None:
    for module in CUSTOM_MODULES:
        importlib.import_module(f"nerveseg_cli.models.{module}")


def _register_all() -> None:
    _register_custom()
    _register_smp()


def _register_for(arch: str) -> None:
    """Register what ``arch`` needs: the custom architectures (torch only), and smp's (seconds
    of imports: smp, timm, torchvision) only for a name they do not hold."""
    _register_custom()
    if arch not in _REGISTRY:
        _register_smp()


def architectures() -> list[str]:
    _register_all()
    return sorted(_REGISTRY)


def arch_spec(arch: str) -> ArchSpec:
    """The spec of a registered architecture; unknown names are a one-line error."""
    _register_for(arch)
    spec = _SPECS.get(arch)
    if spec is None:
        raise NervesegError(f"unknown architecture {arch!r}" + suggest(arch, architectures())
                            + f" (known: {', '.join(architectures())})")
    return spec


def option_flag(key: str, value: Any) -> str:
    """How an extra option is spelled on the command line: ``--skip sharp``, ``--no-batch-norm``."""
    if key == "batch_norm":
        return "--batch-norm" if value else "--no-batch-norm"
    return f"--{key.replace('_', '-')} {value}"


def check_model_config(config: ModelConfig) -> None:
    """Refuse options the architecture cannot take, naming the pair and who takes them."""
    spec = arch_spec(config.arch)
    for key, value in (config.extra or {}).items():
        if key not in EXTRA_OPTIONS:
            raise NervesegError(f"unknown model option {key!r} for {config.arch}")
        if value is not None and key not in spec.options:
            _register_all()  # the message names every architecture that takes it
            takers = sorted(name for name, s in _SPECS.items() if key in s.options)
            raise NervesegError(f"{option_flag(key, value)} does not apply to --arch "
                                f"{config.arch} (it works with: {', '.join(takers)})")
    if config.decoder_attention and not spec.decoder_attention:
        _register_all()
        supported = ", ".join(sorted(n for n, s in _SPECS.items() if s.decoder_attention))
        raise NervesegError(f"--decoder-attention {config.decoder_attention} does not apply "
                            f"to --arch {config.arch} (it works with: {supported})")
    if not spec.pretrained and config.encoder_weights not in (None, "", "none"):
        raise NervesegError(f"--encoder-weights {config.encoder_weights} does not apply to "
                            f"--arch {config.arch}: it is trained from scratch")


def extra_option(config: ModelConfig, key: str, default: Any) -> Any:
    """An extra option of the config, or the architecture's default when unset."""
    value = (config.extra or {}).get(key)
    return default if value is None else value


# --------------------------------------------------------------------------------------------
# segmentation_models_pytorch


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


def _build_smp(arch: str, config: ModelConfig) -> SegmentationNet:
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
    return lambda config: _build_smp(arch, config)


def _register_smp() -> None:
    """Register every smp architecture on first use (importing smp takes seconds)."""
    import segmentation_models_pytorch as smp

    for arch in smp.MODEL_ARCHITECTURES_MAPPING:
        if arch not in _REGISTRY:
            _REGISTRY[arch] = _smp_builder(arch)
            _SPECS[arch] = ArchSpec(_SMP_OPTIONS.get(arch, frozenset({"activation"})),
                                    encoder=True, pretrained=True,
                                    decoder_attention=arch in _ATTENTION_ARCHS)


def load_encoder_weights(encoder: nn.Module, path: Path, in_channels: int) -> None:
    """Load a local encoder state dict (.safetensors, or .pt/.pth read with weights_only).

    ``encoder.`` and ``module.`` prefixes are stripped; a first convolution saved for 3 input
    channels is summed over them for a 1-channel model (as smp does for pretrained weights).
    """
    if path.is_dir():
        require_file(path, "an encoder weights file")
    if not path.is_file():
        raise NervesegError(f"{path}: encoder weights file not found")
    from nerveseg_cli.tensors import load_tensor_file

    state = load_tensor_file(path, "a readable state dict")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                        dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise NervesegError(f"{path}: not a state dict")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    own = encoder.state_dict()
    for key, value in cleaned.items():
        if key in own and value.ndim == 4 and own[key].ndim == 4 and \
                value.shape[1] != own[key].shape[1] and own[key].shape[1] == in_channels == 1:
            cleaned[key] = value.sum(dim=1, keepdim=True)
    cleaned = {k: v for k, v in cleaned.items() if not k.startswith("fc.")}  # classifier
    missing = sorted(set(own) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(own))
    wrong = sorted(k for k in set(own) & set(cleaned) if own[k].shape != cleaned[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (first: {k} "
                         f"{tuple(cleaned[k].shape)} vs {tuple(own[k].shape)})")
        raise NervesegError(f"{path}: keys do not fit the encoder: {'; '.join(parts)}")
    encoder.load_state_dict(cleaned)


def offline_weights_error(name: str, exc: BaseException) -> NervesegError:
    """The one-line error for ImageNet weights that could not be downloaded."""
    return NervesegError(
        f"could not download imagenet weights for {name} ({type(exc).__name__}; offline?): "
        "download them on a connected machine and pass --encoder-weights PATH (a "
        ".safetensors or .pth encoder state dict)")


def build_model(config: ModelConfig) -> SegmentationNet:
    """Build the network a config describes (registered architectures only)."""
    check_model_config(config)  # also registers the architecture and rejects unknown names
    return _REGISTRY[config.arch](config)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
