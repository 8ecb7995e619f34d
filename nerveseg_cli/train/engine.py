"""The training loop: one model on the folds other than K, validated on fold K every epoch
with the Kaggle metric at full resolution (the same code as ``nerveseg score``)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.geometry import Geometry
from nerveseg_cli.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    parse_size,
    threshold_level,
)
from nerveseg_cli.models import (
    EXTRA_OPTIONS,
    ModelConfig,
    arch_spec,
    build_model,
    count_parameters,
)
from nerveseg_cli.runs import (
    BEST,
    LAST,
    METRICS,
    STATE,
    RunConfig,
    load_weights,
    read_config,
    save_weights,
    write_config,
)
from nerveseg_cli.score import counts_from_histograms, dice, value_histograms
from nerveseg_cli.train.augment import AugmentConfig, augment_batch, parse_amount
from nerveseg_cli.train.data import (
    CachedSet,
    cache_samples,
    choose_geometry,
    epoch_batches,
    image_shapes,
    parse_ratio,
    select_folds,
)
from nerveseg_cli.train.losses import erosion_smoothed_targets, make_loss

# Options that change how a run executes but not what it computes: a resumed run may differ.
RUNTIME_KEYS = {"device", "workers", "compile"}


@dataclass
class TrainOptions:
    """Every option of ``nerveseg train`` (the defaults are the CLI's)."""

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
    # geometry
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
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    # the recipe the options started from: a shipped recipe's name or a --config file's path
    recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def augment_config(self) -> AugmentConfig:
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
        extra = {key: getattr(self, key) for key in EXTRA_OPTIONS
                 if getattr(self, key) is not None}
        encoder = self.encoder
        if not arch_spec(self.arch).encoder:
            if encoder not in (_DEFAULT_ENCODER, "none", ""):
                raise NervesegError(f"--encoder {encoder} does not apply to --arch {self.arch} "
                                    "(it has its own encoder; see docs/models.md)")
            encoder = "none"
        return ModelConfig(self.arch, encoder, self.encoder_weights, self.in_channels,
                           self.decoder_attention, self.presence_head, extra or None)


_DEFAULT_ENCODER = TrainOptions.__dataclass_fields__["encoder"].default


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_dice: float
    val_presence_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    run: Path
    best_epoch: int
    best_dice: float
    history: list[EpochRecord] = field(default_factory=list)
    parameters: int = 0
    stopped_early: bool = False


class Reporter:
    """Progress callbacks; the CLI supplies a rich implementation."""

    def stage(self, text: str) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self) -> None: ...

    def epoch_end(self, record: EpochRecord, best: bool) -> None: ...


# --------------------------------------------------------------------------------------------
# set-up helpers


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NervesegError(f"--device {name}: CUDA is not available on this machine")
        if local_rank is not None and name == "cuda":
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise NervesegError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise NervesegError(f"--amp {amp!r}: use auto, bf16, fp16 or off")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise NervesegError("--amp fp16 needs CUDA; use bf16 or off on the CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def make_optimizer(options: TrainOptions, params) -> torch.optim.Optimizer:  # noqa: ANN001
    name = options.optimizer
    if name == "adamw":
        return torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=options.lr, weight_decay=options.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                               weight_decay=options.weight_decay, nesterov=options.momentum > 0)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=options.lr, momentum=options.momentum,
                                   weight_decay=options.weight_decay)
    raise NervesegError(f"--optimizer {name!r}: use adamw, adam, sgd or rmsprop")


def lr_factor(options: TrainOptions, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warm-up, then the
    schedule over the remaining steps (step decay counts whole epochs)."""
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
    if options.scheduler == "none":
        return 1.0
    raise NervesegError(f"--scheduler {options.scheduler!r}: use cosine, step, poly or none")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    def reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()


def compare_for_resume(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a saved run's options and the requested ones."""
    return sorted(k for k in wanted if k not in RUNTIME_KEYS and k in saved
                  and saved[k] != wanted[k])


# --------------------------------------------------------------------------------------------
# the loop


def _batch_tensors(data: CachedSet, index: np.ndarray, device: torch.device,
                   pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    index = np.sort(index) if isinstance(data.images, np.memmap) else index
    images = torch.from_numpy(np.ascontiguousarray(data.images[index]))
    masks = torch.from_numpy(np.ascontiguousarray(data.masks[index]))
    if pin:
        images, masks = images.pin_memory(), masks.pin_memory()
    return (images.to(device, non_blocking=True).unsqueeze(1),
            masks.to(device, non_blocking=True).unsqueeze(1))


def _prefetch(batches: list[np.ndarray], load: Callable[[np.ndarray], Any]):
    """Yield loaded batches, loading the next one in a background thread."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, batches[0]) if batches else None
        for i in range(len(batches)):
            current = future.result()  # type: ignore[union-attr]
            future = pool.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
            yield current


def _to_input(images_u8: torch.Tensor, mean: float, std: float, in_channels: int,
              channels_last: bool) -> torch.Tensor:
    x = (images_u8 - mean) / std
    if in_channels > 1:
        x = x.expand(-1, in_channels, -1, -1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train(options: TrainOptions, out: str | Path, *, overwrite: bool = False,
          resume: bool = False, reporter: Reporter | None = None,
          on_epoch_end: Callable[[EpochRecord], None] | None = None,
          inference: dict[str, Any] | None = None) -> TrainResult:
    """``nerveseg train``: fit one model and leave a run folder in ``out``.

    ``inference``: prediction defaults to record in config.json (a recipe's ``predict`` part,
    see nerveseg_cli/recipes), which ``predict`` applies when not told otherwise."""
    reporter = reporter or Reporter()
    out = Path(out)
    dist = Distributed.from_env()
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and options.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    state_path = out / STATE
    if resume:
        saved = read_config(out)
        differing = compare_for_resume(saved.training, options.to_dict())
        if differing:
            raise NervesegError(f"{out}: cannot resume with different options: "
                                + ", ".join(f"{k} ({saved.training[k]!r} -> "
                                            f"{options.to_dict()[k]!r})" for k in differing))
        if not state_path.is_file():
            raise NervesegError(f"{out}: nothing to resume ({STATE} missing)")
    else:
        check_output_dir(out, overwrite)
    if options.epochs < 1 or options.batch_size < 1 or options.accumulate < 1:
        raise NervesegError("--epochs, --batch-size and --accumulate must be at least 1")

    device = resolve_device(options.device, dist.local_rank)
    amp_dtype = resolve_amp(options.amp, device)
    seed_everything(options.seed, options.deterministic)
    augment = options.augment_config()
    balance = parse_ratio(options.balance)
    loss_fn = make_loss(options.loss, options.loss_weights, focal_alpha=options.focal_alpha,
                        focal_gamma=options.focal_gamma, tversky_alpha=options.tversky_alpha,
                        tversky_beta=options.tversky_beta)
    lr_factor(options, 0, 1)  # validates --scheduler before the slow part

    reporter.stage("building the model")
    model = build_model(options.model_config())
    multiple = model.size_multiple

    reporter.stage("reading the dataset")
    split = select_folds(options.manifest, options.fold)
    size = parse_size(options.size) if options.size else None
    if resume:
        geometry = saved.geometry
    elif size is not None and not options.pad:
        geometry = choose_geometry(size, False, multiple, [])
    else:
        if size is not None:
            choose_geometry(size, True, multiple, [])
        geometry = choose_geometry(None, True, multiple,
                                   image_shapes(split.train + split.val, options.workers))
    train_set = cache_samples(split.train, geometry, keep_original=False,
                              workers=options.workers)
    val_set = cache_samples(split.val, geometry, keep_original=True, workers=options.workers) \
        if split.val else None
    if resume:
        mean, std = saved.mean, saved.std
    else:
        sample = train_set.images[:: max(1, len(train_set.ids) // 256)]
        mean = float(sample.mean()) / 255
        std = max(float(sample.std()) / 255, 1e-3)
    run_config = RunConfig(options.model_config(), geometry, mean, std, options.to_dict(),
                           dict(inference or {}))
    if dist.main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, run_config)

    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    parameters = count_parameters(model)
    optimizer = make_optimizer(options, model.parameters())
    batches_per_epoch = max(1, -(-len(train_set.ids) // (options.batch_size * dist.world)))
    steps_per_epoch = -(-batches_per_epoch // options.accumulate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(options, step, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(options.seed)
    start_epoch, best_dice, best_epoch, history = 1, -1.0, 0, []
    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        load_weights(model, out / LAST)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"]) + 1
        best_dice, best_epoch = float(state["best_dice"]), int(state["best_epoch"])
        history = [EpochRecord(**row) for row in json.loads(state["history"])]
    train_model: torch.nn.Module = model
    if dist.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if options.compile:
        train_model = torch.compile(train_model)

    pin = device.type == "cuda"
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else \
        contextlib.nullcontext
    stopped_early = False
    for epoch in range(start_epoch, options.epochs + 1):
        started = time.perf_counter()
        batches = epoch_batches(train_set.positive, options.batch_size * dist.world, balance,
                                generator)
        if dist.world > 1:
            # Every rank must take the same number of steps (each step all-reduces), so a
            # short last batch is topped up by repetition before it is shared out.
            batches = [np.resize(b, max(b.size, dist.world))[dist.rank::dist.world]
                       for b in batches]
        reporter.epoch_start(epoch, options.epochs, len(batches))
        train_model.train()
        loss_sum, loss_count = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        load = lambda idx: (_batch_tensors(train_set, idx, device, pin), idx)  # noqa: E731
        for step, ((images_u8, masks_u8), index) in enumerate(_prefetch(batches, load)):
            images, masks = augment_batch(images_u8.float() / 255, masks_u8.float(), augment,
                                          generator)
            x = _to_input(images, mean, std, options.in_channels, options.channels_last)
            target = erosion_smoothed_targets(masks, options.ems_kernel, options.ems_epsilon)
            with autocast():
                logits, presence = train_model(x)
            loss = loss_fn(logits, target)
            if presence is not None:
                has = torch.from_numpy(train_set.positive[index]).to(device, torch.float32)
                loss = loss + options.presence_weight * F.binary_cross_entropy_with_logits(
                    presence.float(), has)
            if not torch.isfinite(loss):
                raise NervesegError(f"epoch {epoch}: the loss became {loss.item()}; lower --lr "
                                    "or use --amp bf16/off")
            scaler.scale(loss / options.accumulate).backward()
            last = step + 1 == len(batches)
            if (step + 1) % options.accumulate == 0 or last:
                if options.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            loss_sum += float(loss.detach()) * len(index)
            loss_count += len(index)
            reporter.step()
        loss_sum, loss_count = dist.reduce_sum([loss_sum, loss_count], device)
        train_loss = loss_sum / max(1, loss_count)
        val_loss, val_dice, presence_accuracy = validate(
            model, val_set, geometry, mean, std, options, loss_fn, device, autocast, dist)
        record = EpochRecord(epoch, optimizer.param_groups[0]["lr"], train_loss, val_loss,
                             val_dice, presence_accuracy, time.perf_counter() - started)
        history.append(record)
        score_now = val_dice if val_set is not None else float(epoch)
        improved = score_now > best_dice
        if improved:
            best_dice, best_epoch = score_now, epoch
        if dist.main:
            if improved:
                save_weights(model, out / BEST)
            save_weights(model, out / LAST)
            atomic_write_text(out / METRICS, metrics_csv(history))
            with open(out / "train.log", "a", encoding="utf-8") as log:
                log.write(format_record(record, improved) + "\n")
            buffer = io.BytesIO()
            torch.save({
                "epoch": epoch, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                "best_dice": best_dice, "best_epoch": best_epoch,
                "history": json.dumps([asdict(r) for r in history]),
            }, buffer)
            atomic_write_bytes(state_path, buffer.getvalue())
        reporter.epoch_end(record, improved)
        if on_epoch_end:
            on_epoch_end(record)
        if options.patience and val_set is not None and epoch - best_epoch >= options.patience:
            stopped_early = True
            break
    if dist.main:
        plot_metrics(history, out / "metrics.png")
    return TrainResult(out, best_epoch, best_dice if val_set is not None else float("nan"),
                       history, parameters, stopped_early)


@torch.no_grad()
def validate(model: torch.nn.Module, data: CachedSet | None, geometry: Geometry, mean: float,
             std: float, options: TrainOptions, loss_fn, device: torch.device,  # noqa: ANN001
             autocast, dist: Distributed) -> tuple[float, float, float]:  # noqa: ANN001
    """Validation loss, Kaggle mean Dice at full resolution, presence accuracy."""
    if data is None:
        return float("nan"), float("nan"), float("nan")
    model.eval()
    level = threshold_level(options.threshold)
    indices = np.arange(len(data.ids))[dist.rank::dist.world]
    loss_sum = dice_sum = presence_hits = presence_count = 0.0
    for start in range(0, indices.size, options.batch_size):
        index = indices[start:start + options.batch_size]
        images_u8, masks_u8 = _batch_tensors(data, index, device, False)
        x = _to_input(images_u8.float() / 255, mean, std, options.in_channels,
                      options.channels_last)
        with autocast():
            logits, presence = model(x)
        logits = logits.float()
        loss_sum += float(loss_fn(logits, masks_u8.float())) * len(index)
        probs = torch.sigmoid(logits)
        for row, i in enumerate(index):
            truth = data.original_masks[i]
            prob = geometry.backward(probs[row:row + 1], *truth.shape)
            values = (prob[0, 0] * 255).round().to(torch.uint8).cpu().numpy()
            truth_hist, all_hist = value_histograms(values, truth)
            counts = counts_from_histograms(truth_hist[None], all_hist[None], level,
                                            options.min_area)
            dice_sum += float(dice(counts)[0])
        if presence is not None:
            predicted = (torch.sigmoid(presence.float()) > 0.5).cpu().numpy()
            presence_hits += float((predicted == data.positive[index]).sum())
            presence_count += len(index)
    loss_sum, dice_sum, presence_hits, presence_count = dist.reduce_sum(
        [loss_sum, dice_sum, presence_hits, presence_count], device)
    n = len(data.ids)
    return (loss_sum / n, dice_sum / n,
            presence_hits / presence_count if presence_count else float("nan"))


def format_record(record: EpochRecord, best: bool) -> str:
    """One log line per epoch."""
    text = (f"epoch {record.epoch:3d}  lr {record.lr:.2e}  train loss {record.train_loss:.4f}  "
            f"val loss {record.val_loss:.4f}  val dice {record.val_dice:.4f}")
    if record.val_presence_accuracy == record.val_presence_accuracy:
        text += f"  presence acc {record.val_presence_accuracy:.3f}"
    return text + f"  {record.seconds:.1f}s" + ("  *best" if best else "")


def metrics_csv(history: list[EpochRecord]) -> str:
    lines = ["epoch,lr,train_loss,val_loss,val_dice,val_presence_accuracy,seconds"]
    for r in history:
        lines.append(f"{r.epoch},{r.lr:.6g},{r.train_loss:.6f},{r.val_loss:.6f},"
                     f"{r.val_dice:.6f},{r.val_presence_accuracy:.6f},{r.seconds:.3f}")
    return "\n".join(lines) + "\n"


def plot_metrics(history: list[EpochRecord], path: Path) -> None:
    """Loss and Dice curves (matplotlib, headless)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r.train_loss for r in history], label="train loss")
    left.plot(epochs, [r.val_loss for r in history], label="validation loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [r.val_dice for r in history], label="validation mean Dice",
               color="tab:green")
    right.set_xlabel("epoch")
    right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
