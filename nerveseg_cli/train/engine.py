"""The training loop: one model on the folds other than K, validated on fold K every epoch
with the Kaggle metric at full resolution (the same code as ``nerveseg score``).

:func:`train` is the library entry point; :class:`Trainer` holds one run's objects and runs it
epoch by epoch: a training pass over shuffled (or balanced) batches augmented on the device, a
validation pass, then the checkpoint (weights, metrics, :class:`~.state.TrainState`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nerveseg_cli.device import autocast_for, resolve_amp, resolve_device, seed_everything
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.geometry import Geometry, normalise_input
from nerveseg_cli.io.images import LabelMapReader, MaskReader, parse_size
from nerveseg_cli.io.outputs import Outputs, atomic_write_files, atomic_write_text
from nerveseg_cli.io.parallel import prefetch
from nerveseg_cli.models import build_model, count_parameters
from nerveseg_cli.postprocess import threshold_level
from nerveseg_cli.runs import (
    BEST,
    LAST,
    METRICS,
    STATE,
    RunConfig,
    load_weights,
    read_config,
    weights_bytes,
    write_config,
)
from nerveseg_cli.score import counts_from_histograms, dice, value_histograms
from nerveseg_cli.train.augment import augment_batch
from nerveseg_cli.train.data import (
    CachedSet,
    cache_samples,
    choose_geometry,
    epoch_batches,
    image_shapes,
    parse_ratio,
    select_folds,
)
from nerveseg_cli.train.distributed import Distributed
from nerveseg_cli.train.losses import class_targets, erosion_smoothed_targets, make_loss
from nerveseg_cli.train.options import TrainOptions, compare_for_resume
from nerveseg_cli.train.progress import (
    EpochRecord,
    Reporter,
    format_record,
    metrics_csv,
    plot_metrics,
)
from nerveseg_cli.train.schedule import lr_factor, make_optimizer, make_scheduler
from nerveseg_cli.train.state import Optimisation, TrainState

# Mean and std are estimated on about this many training images (every k-th one).
NORMALISATION_SAMPLE = 256


def _kaggle_dice(values: np.ndarray, truth: np.ndarray, level: int, min_area: int) -> float:
    """One image's Kaggle Dice (empty-on-empty = 1), by the score code."""
    truth_hist, all_hist = value_histograms(values, truth)
    return float(dice(counts_from_histograms(truth_hist[None], all_hist[None], level,
                                             min_area))[0])


@dataclass
class TrainResult:
    run: Path
    best_epoch: int
    best_dice: float
    history: list[EpochRecord] = field(default_factory=list)
    parameters: int = 0
    stopped_early: bool = False


def train(options: TrainOptions, out: str | Path, *, overwrite: bool = False,
          resume: bool = False, reporter: Reporter | None = None,
          inference: dict[str, Any] | None = None) -> TrainResult:
    """``nerveseg train``: fit one model and leave a run folder in ``out``.

    ``resume`` continues the run in ``out`` from its last completed epoch (the options must be
    the run's, but for :data:`~.options.RUNTIME_KEYS`). ``inference``: prediction defaults to
    record in config.json (a recipe's ``predict`` part, see nerveseg_cli/recipes), which
    ``predict`` applies when not told otherwise."""
    options.validate()
    with Outputs(inputs=[options.manifest or None]) as outputs:
        trainer = Trainer(options, Path(out), reporter or Reporter(), outputs, resume=resume,
                          overwrite=overwrite, inference=inference)
        return trainer.run()


def check_run_folder(out: Path, options: TrainOptions, resume: bool,
                     overwrite: bool) -> RunConfig | None:
    """Refuse a run folder that cannot take this run; returns the saved config to resume."""
    if not resume:
        Outputs.preflight([options.manifest or None], folders=[out], overwrite=overwrite)
        return None
    saved = read_config(out)
    wanted = options.to_dict()
    differing = compare_for_resume(saved.training, wanted)
    if differing:
        raise NervesegError(f"{out}: cannot resume with different options: "
                            + ", ".join(f"{k} ({saved.training[k]!r} -> {wanted[k]!r})"
                                        for k in differing))
    if not (out / STATE).is_file():
        raise NervesegError(f"{out}: nothing to resume ({STATE} missing)")
    return saved


def _batch_tensors(data: CachedSet, index: np.ndarray, device: torch.device,
                   pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) uint8 images and masks of the cached rows ``index``, on ``device``."""
    index = np.sort(index) if isinstance(data.images, np.memmap) else index
    images = torch.from_numpy(np.ascontiguousarray(data.images[index]))
    masks = torch.from_numpy(np.ascontiguousarray(data.masks[index]))
    if pin:
        images, masks = images.pin_memory(), masks.pin_memory()
    return (images.to(device, non_blocking=True).unsqueeze(1),
            masks.to(device, non_blocking=True).unsqueeze(1))


class Trainer:
    """One run: its options, model, data and loop state (built in this order: the model's
    initial weights depend on the seed and nothing else)."""

    def __init__(self, options: TrainOptions, out: Path, reporter: Reporter,
                 outputs: Outputs, *, resume: bool, overwrite: bool,
                 inference: dict[str, Any] | None) -> None:
        self.options, self.out, self.reporter = options, out, reporter
        self.dist = Distributed.from_env()
        self.dist.init(options.device)
        saved = check_run_folder(out, options, resume, overwrite)
        self.device = resolve_device(options.device, self.dist.local_rank)
        amp_dtype = resolve_amp(options.amp, self.device)
        self.autocast = autocast_for(self.device, amp_dtype)
        seed_everything(options.seed, options.deterministic)
        self.augment = options.augment_config()
        self.balance = parse_ratio(options.balance)
        self.classes = options.class_list()
        self.loss_fn = make_loss(options.loss, options.loss_weights,
                                 focal_alpha=options.focal_alpha,
                                 focal_gamma=options.focal_gamma,
                                 tversky_alpha=options.tversky_alpha,
                                 tversky_beta=options.tversky_beta, mode=self.mode)
        lr_factor(options, 0, 1)  # validates --scheduler before the slow part
        reporter.stage("building the model")
        self.model = build_model(options.model_config())
        reporter.stage("reading the dataset")
        self._read_data(saved)
        self.config = RunConfig(options.model_config(), self.geometry, self.mean, self.std,
                                options.to_dict(), dict(inference or {}), self.classes)
        if self.dist.main:
            outputs.add_inputs(self.input_folders)
            outputs.resumable_folder(out, overwrite=overwrite, resume=resume,
                                     resumable=lambda added: STATE in added)
            if saved is None:
                write_config(out, self.config)
        self._prepare_loop(amp_dtype)
        self.state = TrainState()
        if saved is not None:
            self.state = TrainState.load(out / STATE, self.loop)
            load_weights(self.model, out / LAST)
        self.train_model = self._wrap(self.model)

    def _read_data(self, saved: RunConfig | None) -> None:
        """The folds, the geometry (the run's own when resuming), the cached sets and the
        normalisation."""
        options = self.options
        split = select_folds(options.manifest, options.fold)
        self.input_folders = {f.parent for s in split.train + split.val
                              for f in (s.image, s.mask) if f is not None}
        if saved is not None:
            self.geometry = saved.geometry
        else:
            self.geometry = self._choose_geometry(split.train + split.val)
        reader = MaskReader(options.label, options.manifest) if self.classes is None else \
            LabelMapReader(self.classes.count, options.manifest)
        self.train_set = cache_samples(split.train, self.geometry, keep_original=False,
                                       reader=reader, workers=options.workers)
        self.val_set = cache_samples(split.val, self.geometry, keep_original=True,
                                     reader=reader, workers=options.workers) \
            if split.val else None
        reader.finish()
        if saved is not None:
            self.mean, self.std = saved.mean, saved.std
        else:
            images = self.train_set.images
            sample = images[:: max(1, len(self.train_set.ids) // NORMALISATION_SAMPLE)]
            self.mean = float(sample.mean()) / 255
            self.std = max(float(sample.std()) / 255, 1e-3)

    @property
    def mode(self) -> str:
        """binary (one sigmoid), softmax (over the classes) or multilabel (a sigmoid each)."""
        if self.classes is None:
            return "binary"
        return "multilabel" if self.options.multilabel else "softmax"

    def targets(self, masks: torch.Tensor, smoothing: bool = True) -> torch.Tensor:
        """What the loss compares the logits with: the (erosion-smoothed) masks, or one
        channel per class of the label maps."""
        options = self.options
        kernel, epsilon = (options.ems_kernel, options.ems_epsilon) if smoothing else (0, 0.0)
        if self.classes is None:
            return erosion_smoothed_targets(masks, kernel, epsilon)
        return class_targets(masks, self.classes.count, options.multilabel, kernel, epsilon)

    def class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) probabilities of the foreground classes (K = 1 when binary)."""
        if self.mode == "softmax":
            return torch.softmax(logits, dim=1)[:, 1:]
        return torch.sigmoid(logits)

    def _choose_geometry(self, samples: list) -> Geometry:
        options, multiple = self.options, self.model.size_multiple
        size = parse_size(options.size) if options.size else None
        if size is not None and not options.pad:
            return choose_geometry(size, False, multiple, [])
        if size is not None:
            choose_geometry(size, True, multiple, [])  # raises: --size and --pad exclude
        return choose_geometry(None, True, multiple, image_shapes(samples, options.workers))

    def _prepare_loop(self, amp_dtype: torch.dtype | None) -> None:
        options = self.options
        self.model.to(self.device)
        if options.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.parameters = count_parameters(self.model)
        optimizer = make_optimizer(options, self.model.parameters())
        per_step = options.batch_size * self.dist.world
        batches_per_epoch = max(1, -(-len(self.train_set.ids) // per_step))
        steps_per_epoch = -(-batches_per_epoch // options.accumulate)
        self.loop = Optimisation(
            optimizer, make_scheduler(options, optimizer, steps_per_epoch),
            torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
            torch.Generator().manual_seed(options.seed))

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training pass calls: under DDP and/or torch.compile when asked."""
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.options.compile else model

    # ----------------------------------------------------------------------------------------
    # the loop

    def run(self) -> TrainResult:
        options, state = self.options, self.state
        stopped_early = False
        for epoch in range(state.epoch + 1, options.epochs + 1):
            started = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            val_loss, val_dice, presence_accuracy, class_dice = self.validate()
            record = EpochRecord(epoch, self.loop.optimizer.param_groups[0]["lr"], train_loss,
                                 val_loss, val_dice, presence_accuracy,
                                 time.perf_counter() - started, class_dice)
            improved = self._update_state(record)
            if self.dist.main:
                self.checkpoint(record, improved)
            self.reporter.epoch_end(record, improved)
            if options.patience and self.val_set is not None and \
                    epoch - state.best_epoch >= options.patience:
                stopped_early = True
                break
        if self.dist.main:
            plot_metrics(state.history, self.out / "metrics.png")
        best = state.best_dice if self.val_set is not None else float("nan")
        return TrainResult(self.out, state.best_epoch, best, state.history, self.parameters,
                           stopped_early)

    def _update_state(self, record: EpochRecord) -> bool:
        """Add the epoch to the state; whether it is the best so far (without validation the
        latest epoch is the best)."""
        state = self.state
        state.epoch = record.epoch
        state.history.append(record)
        score = record.val_dice if self.val_set is not None else float(record.epoch)
        if score <= state.best_dice:
            return False
        state.best_dice, state.best_epoch = score, record.epoch
        return True

    def _epoch_batches(self) -> list[np.ndarray]:
        dist = self.dist
        batches = epoch_batches(self.train_set.positive, self.options.batch_size * dist.world,
                                self.balance, self.loop.generator)
        if dist.world > 1:
            # Every rank must take the same number of steps (each step all-reduces), so a
            # short last batch is topped up by repetition before it is shared out.
            batches = [np.resize(b, max(b.size, dist.world))[dist.rank::dist.world]
                       for b in batches]
        return batches

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training set; the mean training loss over every process."""
        options, loop = self.options, self.loop
        batches = self._epoch_batches()
        self.reporter.epoch_start(epoch, options.epochs, len(batches))
        self.train_model.train()
        loss_sum, loss_count = 0.0, 0
        loop.optimizer.zero_grad(set_to_none=True)
        pin = self.device.type == "cuda"

        def load(index: np.ndarray) -> tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray]:
            return _batch_tensors(self.train_set, index, self.device, pin), index

        for step, ((images_u8, masks_u8), index) in enumerate(prefetch(batches, load)):
            loss = self.train_step(images_u8, masks_u8, index, epoch)
            if (step + 1) % options.accumulate == 0 or step + 1 == len(batches):
                self._optimizer_step()
            loss_sum += float(loss) * len(index)
            loss_count += len(index)
            self.reporter.step()
        loss_sum, loss_count = self.dist.reduce_sum([loss_sum, loss_count], self.device)
        return loss_sum / max(1, loss_count)

    def train_step(self, images_u8: torch.Tensor, masks_u8: torch.Tensor, index: np.ndarray,
                   epoch: int) -> torch.Tensor:
        """Forward and backward of one batch (gradients accumulate); the detached loss."""
        options = self.options
        images, masks = augment_batch(images_u8.float() / 255, masks_u8.float(), self.augment,
                                      self.loop.generator, labels=self.classes is not None)
        x = normalise_input(images, self.mean, self.std, options.in_channels,
                            options.channels_last)
        target = self.targets(masks)
        with self.autocast():
            logits, presence = self.train_model(x)
        loss = self.loss_fn(logits, target)
        if presence is not None:
            has = torch.from_numpy(self.presence_truth(self.train_set, index)).to(
                self.device, torch.float32)
            loss = loss + options.presence_weight * F.binary_cross_entropy_with_logits(
                presence.float(), has)
        if not torch.isfinite(loss):
            raise NervesegError(f"epoch {epoch}: the loss became {loss.item()}; lower --lr or "
                                "use --amp bf16/off")
        self.loop.scaler.scale(loss / options.accumulate).backward()
        return loss.detach()

    @staticmethod
    def presence_truth(data: CachedSet, index: np.ndarray) -> np.ndarray:
        """Whether each image holds the structure: (N,), or (N, K) for each class."""
        return data.positive[index] if data.class_present is None else \
            data.class_present[index]

    def _optimizer_step(self) -> None:
        loop = self.loop
        if self.options.grad_clip > 0:
            loop.scaler.unscale_(loop.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scheduler.step()

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float, dict[str, float] | None]:
        """Validation loss, Kaggle mean Dice at full resolution (over images and classes),
        presence accuracy (NaN without a validation fold), and each class's Dice (several
        classes)."""
        data = self.val_set
        if data is None:
            return float("nan"), float("nan"), float("nan"), None
        self.model.eval()
        indices = np.arange(len(data.ids))[self.dist.rank::self.dist.world]
        classes = 1 if self.classes is None else self.classes.count - 1
        loss_sum = hits = count = 0.0
        dice_sums = [0.0] * classes
        for start in range(0, indices.size, self.options.batch_size):
            index = indices[start:start + self.options.batch_size]
            loss, dices, presence_hits = self._validate_batch(data, index)
            loss_sum += loss * len(index)
            for image_dice in dices:  # running sums, image by image
                for k, value in enumerate(image_dice):
                    dice_sums[k] += value
            if presence_hits is not None:
                hits += presence_hits
                count += len(index) * classes
        loss_sum, hits, count, *dice_sums = self.dist.reduce_sum(
            [loss_sum, hits, count, *dice_sums], self.device)
        n = len(data.ids)
        per_class = None if self.classes is None else \
            {name: total / n for name, total in zip(self.classes.foreground, dice_sums,
                                                    strict=True)}
        return (loss_sum / n, sum(dice_sums) / (n * classes),
                hits / count if count else float("nan"), per_class)

    def _validate_batch(self, data: CachedSet, index: np.ndarray
                        ) -> tuple[float, list[list[float]], float | None]:
        """(loss, each image's Dice per class at its original size, presence hits or None)."""
        options = self.options
        images_u8, masks_u8 = _batch_tensors(data, index, self.device, False)
        x = normalise_input(images_u8.float() / 255, self.mean, self.std, options.in_channels,
                            options.channels_last)
        with self.autocast():
            logits, presence = self.model(x)
        logits = logits.float()
        loss = float(self.loss_fn(logits, self.targets(masks_u8.float(), smoothing=False)))
        probs = self.class_probabilities(logits)
        level = threshold_level(options.threshold)
        dices = []
        for row, i in enumerate(index):
            truth = data.original_masks[i]
            prob = self.geometry.backward(probs[row:row + 1], *truth.shape)
            values = (prob[0] * 255).round().to(torch.uint8).cpu().numpy()  # (K, H, W)
            dices.append([_kaggle_dice(values[k], truth if self.classes is None
                                       else truth == k + 1, level, options.min_area)
                          for k in range(values.shape[0])])
        if presence is None:
            return loss, dices, None
        predicted = (torch.sigmoid(presence.float()) > 0.5).cpu().numpy()
        return loss, dices, float((predicted == self.presence_truth(data, index)).sum())

    def checkpoint(self, record: EpochRecord, improved: bool) -> None:
        """The last weights and the training state, written together (a resume never pairs
        one epoch's weights with another's state), the best weights, the metrics, the log."""
        out = self.out
        weights = weights_bytes(self.model)
        files = [(out / LAST, weights), (out / STATE, self.state.to_bytes(self.loop))]
        if improved:
            files.insert(0, (out / BEST, weights))
        atomic_write_files(files)
        atomic_write_text(out / METRICS, metrics_csv(self.state.history))
        with open(out / "train.log", "a", encoding="utf-8") as log:
            log.write(format_record(record, improved) + "\n")
