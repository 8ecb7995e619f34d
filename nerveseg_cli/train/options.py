"""Every option of ``nerveseg train`` (:class:`TrainOptions`, whose defaults are the CLI's);
:mod:`.resolution` combines the command line, a recipe and ``--resume`` into one.

No torch import at module level: the CLI reads the defaults from here to build its options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.records import DictRecord

if TYPE_CHECKING:
    from nerveseg_cli.classes import Classes
    from nerveseg_cli.models import ModelConfig
    from nerveseg_cli.train.augment import AugmentConfig

# Options that change how a run executes but not what it computes: a resumed run may differ.
RUNTIME_KEYS = {"device", "workers", "compile", "threads", "save_every"}


@dataclass
class TrainOptions(DictRecord):
    """Every option of ``nerveseg train``; the CLI's defaults are these."""

    manifest: str = ""
    fold: str = "0"
    # model
    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str = "none"
    in_channels: int = 1
    decoder_attention: str | None = None
    presence_head: bool = False
    presence_weight: float = 0.2
    # custom architectures (None: the architecture's own default; docs/models.md)
    skip: str | None = None
    width: int | None = None
    batch_norm: bool | None = None
    activation: str | None = None
    context: str | None = None
    fusion: str | None = None
    decoders: str | None = None
    # data and geometry
    label: int | None = None  # masks are label maps: foreground = value N
    classes: str | None = None  # a multi-class task: names (background first) or a count
    multilabel: bool = False  # several classes: a sigmoid per class instead of a softmax
    size: str | None = None
    pad: bool = False
    # loss
    loss: str = "bce+dice"
    loss_weights: list[float] | None = None
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.5
    tversky_beta: float = 0.5
    ems_kernel: int = 0
    ems_epsilon: float = 0.0
    # augmentation
    hflip: float = 0.5
    vflip: float = 0.5
    rotate: str = "0"
    brightness: str = "0"
    noise: str = "0"
    scale: str = "0"
    balance: str | None = None
    # optimisation
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "cosine"
    step_gamma: float = 0.95
    poly_power: float = 0.9
    warmup_epochs: float = 1.0
    epochs: int = 40
    batch_size: int = 8
    accumulate: int = 1
    patience: int = 0
    grad_clip: float = 1.0
    # validation metric
    threshold: float = 0.5
    min_area: int = 0
    # speed and reproducibility
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    workers: int = 4
    threads: int = 0  # torch's CPU threads; 0: from the cores available (docs/train.md)
    save_every: str = "10m"  # checkpoint policy (train/checkpoints.py: why 10 minutes)
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    # the recipe the options started from: a shipped recipe's name or a --config file's path
    recipe: str | None = None

    def validate(self, origin: Mapping[str, str] | None = None) -> TrainOptions:
        """Refuse numbers no run can use (before anything is read or written). ``origin``
        names the recipe an option came from, for the message."""
        for name, ok, need in _NUMBER_RULES:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value) or not ok(value):
                raise NervesegError(f"{option_name(name, value, origin)}: must be {need}")
        from nerveseg_cli.train.checkpoints import SavePolicy

        SavePolicy.parse(self.save_every)
        return self

    def augment_config(self) -> AugmentConfig:
        from nerveseg_cli.train.augment import AugmentConfig, parse_amount

        for name, p in (("--hflip", self.hflip), ("--vflip", self.vflip)):
            if not 0 <= p <= 1:
                raise NervesegError(f"{name} {p}: a probability must be in [0, 1]")
        return AugmentConfig(self.hflip, self.vflip, parse_amount(self.rotate, "--rotate"),
                             parse_amount(self.scale, "--scale"),
                             parse_amount(self.brightness, "--brightness"),
                             parse_amount(self.noise, "--noise"))

    def model_config(self) -> ModelConfig:
        """The model part of the options. Architectures without an smp encoder store encoder
        ``none``; asking them for another encoder than the default is an error."""
        from nerveseg_cli.models import EXTRA_OPTIONS, ModelConfig, arch_spec

        extra = {key: getattr(self, key) for key in EXTRA_OPTIONS
                 if getattr(self, key) is not None}
        encoder = self.encoder
        if not arch_spec(self.arch).encoder:
            check_encoder_applies(self.arch, encoder, encoder not in (DEFAULTS.encoder, "none", ""))
            encoder = "none"
        classes = self.class_list()
        return ModelConfig(self.arch, encoder, self.encoder_weights, self.in_channels,
                           self.decoder_attention, self.presence_head, extra or None,
                           classes.count if classes else 2, self.multilabel)

    def class_list(self) -> Classes | None:
        """The task's classes (None: binary, and also for two classes, which are the binary
        task itself)."""
        from nerveseg_cli.classes import Classes

        if self.classes is None:
            if self.multilabel:
                raise NervesegError("--multilabel needs --classes (a sigmoid per class)")
            return None
        classes = Classes.parse(str(self.classes))
        if classes.binary:
            if self.multilabel:
                raise NervesegError("--multilabel needs three classes or more")
            return None
        if self.label is not None:
            raise NervesegError("--label and --classes exclude each other: --classes keeps "
                                "every class of the label maps, --label takes one")
        return classes


# (field, test, what the test asks) for every numeric option.
_NUMBER_RULES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("lr", lambda v: v > 0, "a positive number"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("step_gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("poly_power", lambda v: v > 0, "a positive number"),
    ("warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("epochs", lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    ("batch_size", lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    ("accumulate", lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    ("patience", lambda v: v >= 0 and v == int(v), "a whole number >= 0"),
    ("grad_clip", lambda v: v >= 0, ">= 0 (0: off)"),
    ("presence_weight", lambda v: v >= 0, ">= 0"),
    ("focal_gamma", lambda v: v >= 0, ">= 0"),
    ("tversky_alpha", lambda v: v >= 0, ">= 0"),
    ("tversky_beta", lambda v: v >= 0, ">= 0"),
    ("ems_kernel", lambda v: v >= 0 and v == int(v), "a whole number >= 0"),
    ("ems_epsilon", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("hflip", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("vflip", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("min_area", lambda v: v >= 0 and v == int(v), "a whole number >= 0"),
    ("in_channels", lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    ("width", lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    ("label", lambda v: v >= 0 and v == int(v), "a whole number >= 0"),
    ("workers", lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    ("threads", lambda v: v >= 0 and v == int(v), "a whole number >= 0 (0: automatic)"),
)

DEFAULTS = TrainOptions()
# Defaults that a recipe may leave unset and the command line shows as "recipe, else X".
VALIDATION_DEFAULTS = {"threshold": DEFAULTS.threshold, "min_area": DEFAULTS.min_area}


def option_name(name: str, value: Any, origin: Mapping[str, str] | None = None) -> str:
    """How a message names an option: ``--lr -1``, or ``recipe.json: train.lr = -1``."""
    if origin and name in origin:
        return f"{origin[name]}: train.{name} = {value!r}"
    return f"--{name.replace('_', '-')} {value!r}"


def check_encoder_applies(arch: str, encoder: str, asked: bool) -> None:
    """An encoder asked for (on the command line, in a recipe, or other than the default) on an
    architecture that has its own encoder is an error."""
    from nerveseg_cli.models import arch_spec

    if asked and not arch_spec(arch).encoder:
        raise NervesegError(f"--encoder {encoder} does not apply to --arch {arch} (it has its "
                            "own encoder; see docs/models.md)")


def compare_for_resume(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between a saved run's options and the requested ones."""
    return sorted(k for k in wanted if k not in RUNTIME_KEYS and k in saved
                  and saved[k] != wanted[k])


def default_decoders(values: Mapping[str, Any]) -> str | None:
    """``decoders`` unless given: ``per-class`` for a unet of several classes (without APF,
    which fuses one decoder's levels), as it lifted the vessel over the shared decoder on
    usgra-seg at the same epoch time (docs/performance.md, "Several classes"); else unset
    (one decoder). Resolved when a run starts and stored with it."""
    if values["decoders"] is not None or values["fusion"] == "apf" or values["classes"] is None:
        return values["decoders"]
    from nerveseg_cli.classes import Classes
    from nerveseg_cli.models import arch_spec

    if Classes.parse(str(values["classes"])).binary:
        return None
    # the registry knows which architectures take the option (smp's unet)
    return "per-class" if "decoders" in arch_spec(values["arch"]).options else None
