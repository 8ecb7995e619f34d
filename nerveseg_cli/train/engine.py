"""The training loop: one model on the folds other than K, validated on fold K every epoch
with the Kaggle metric at full resolution (the same code as ``nerveseg score``).

:func:`train` is the library entry point; :class:`Trainer` holds one run's objects and runs it
epoch by epoch: a training pass over shuffled (or balanced) batches augmented on the device, a
validation pass, the metrics, and the checkpoint (weights and :class:`~.state.TrainState`) when
``--save-every`` says so (:mod:`.checkpoints`), at the end, and on Ctrl-C or SIGTERM
(:mod:`.signals`).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nerveseg_cli.device import (
    CpuMeter,
    autocast_for,
    available_cores,
    derived_seed,
    resolve_amp,
    resolve_device,
    seed_everything,
    seed_global,
    set_threads,
    step_generator,
    threads_for_load,
)
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.evaluation.postprocess import threshold_level
from nerveseg_cli.evaluation.score import counts_from_histograms, dice, value_histograms
from nerveseg_cli.geometry import Geometry, normalise_input
from nerveseg_cli.io.images import LabelMapReader, MaskReader, parse_size
from nerveseg_cli.io.locks import lock_output
from nerveseg_cli.io.outputs import Outputs, atomic_write_files, atomic_write_text
from nerveseg_cli.io.parallel import prefetch
from nerveseg_cli.io.runs import (
    BEST,
    LAST,
    LOG,
    METRICS,
    PLOT,
    STATE,
    RunConfig,
    clear_run_files,
    load_weights,
    read_config,
    unwrap,
    weights_bytes,
    write_config,
)
from nerveseg_cli.models import build_model, count_parameters
from nerveseg_cli.train.augment import augment_batch
from nerveseg_cli.train.checkpoints import SavePolicy
from nerveseg_cli.train.data import (
    CachedSet,
    cache_samples,
    choose_geometry,
    epoch_batches,
    image_shapes,
    parse_ratio,
    select_folds,
    share_out,
)
from nerveseg_cli.train.distributed import Distributed
from nerveseg_cli.train.dry_step import dry_step
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
from nerveseg_cli.train.signals import StopRequest, TrainingInterrupted, stop_on_signals
from nerveseg_cli.train.state import EpochProgress, Optimisation, TrainState, saved_progress

# Mean and std are estimated on about this many training images (every k-th one).
NORMALISATION_SAMPLE = 256
# Inside an epoch the thread team is resized to the load at most this often (seconds): often
# enough to follow other jobs starting and ending, over windows long enough to measure them.
ADAPT_SECONDS = 30.0
# Under DDP the processes agree on a stop request every this many steps (an all-reduce, which
# waits for the GPU), and at every epoch's end.
STOP_POLL_STEPS = 16
# Streams of random numbers derived from the run's seed, per process and step.
AUGMENT_STREAM, GLOBAL_STREAM = 0, 1


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
    already_complete: bool = False  # resumed with nothing left to train: nothing ran


def train(options: TrainOptions, out: str | Path, *, overwrite: bool = False,
          resume: bool = False, reporter: Reporter | None = None,
          inference: dict[str, Any] | None = None) -> TrainResult:
    """``nerveseg train``: fit one model and leave a run folder in ``out``.

    ``resume`` continues the run in ``out`` from its last save (the options must be
    the run's, but for :data:`~.options.RUNTIME_KEYS`). ``inference``: prediction defaults to
    record in config.json (a recipe's ``predict`` part, see nerveseg_cli/train/recipes), which
    ``predict`` applies when not told otherwise. Raises
    :class:`~.signals.TrainingInterrupted` after saving when SIGTERM or Ctrl-C stopped it."""
    options.validate()
    if resume:
        finished = finished_run(Path(out), options)
        if finished is not None:
            return finished
    threads = torch.get_num_threads()
    dist = Distributed.from_env()
    try:
        with Outputs(inputs=[options.manifest or None]) as outputs:
            trainer = Trainer(options, Path(out), reporter or Reporter(), outputs, dist,
                              resume=resume, overwrite=overwrite, inference=inference)
            return trainer.run()
    finally:
        torch.set_num_threads(threads)  # --threads is this run's, not the caller's
        dist.close()


def make_loop(options: TrainOptions, model: torch.nn.Module, steps_per_epoch: int,
              amp_dtype: torch.dtype | None) -> Optimisation:
    """The optimizer, schedule, gradient scaler and batch-order generator of a run."""
    optimizer = make_optimizer(options, model.parameters())
    return Optimisation(optimizer, make_scheduler(options, optimizer, steps_per_epoch),
                        torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
                        torch.Generator().manual_seed(options.seed))


def finished_run(out: Path, options: TrainOptions) -> TrainResult | None:
    """The result of a run to resume that has nothing left to train (its epochs done, or
    stopped by --patience), without reading the data; None when there is training left. The
    options, state and weights are checked as for a resume (on the CPU: nothing trains)."""
    check_run_folder(out, options, resume=True, overwrite=False)
    # nobody writes the run while it is read (one writer at a time); under torchrun the main
    # process locks it for all (the others would be refused by its lock)
    main = Distributed.from_env().main
    with lock_output(out) if main else contextlib.nullcontext():
        progress = saved_progress(out / STATE)
        validated = any(record.validated for record in progress.history)
        early = bool(options.patience and validated
                     and progress.epoch - progress.best_epoch >= options.patience)
        if progress.progress is not None or (progress.epoch < options.epochs and not early):
            return None
        model = build_model(options.model_config())
        TrainState.load(out / STATE, make_loop(options, model, 1, None))  # its own state
        load_weights(model, out / LAST)  # and its own weights
    return TrainResult(out, progress.best_epoch,
                       progress.best_dice if validated else float("nan"), progress.history,
                       count_parameters(model), early, already_complete=True)


def check_run_folder(out: Path, options: TrainOptions, resume: bool,
                     overwrite: bool) -> RunConfig | None:
    """Refuse a run folder that cannot take this run; returns the saved config to resume."""
    Outputs.preflight([options.manifest or None], folders=[out], overwrite=overwrite,
                      resume=resume)
    if not resume:
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


@dataclass
class Batch:
    """Cached rows on the device, every tensor in the order of ``index``."""

    images: torch.Tensor  # (N, 1, H, W) uint8
    masks: torch.Tensor  # (N, 1, H, W) uint8: 0/1, or class indices
    present: torch.Tensor  # (N,) or, with several classes, (N, K) float: structure present
    index: np.ndarray  # the cached rows


def load_batch(data: CachedSet, index: np.ndarray, device: torch.device) -> Batch:
    """The cached rows ``index`` (read in ascending order from a memmap cache, which is faster
    on disk; every tensor follows that order), copied to ``device`` without waiting: from
    pinned memory on CUDA, pinned for this process's GPU also in the prefetch thread."""
    if isinstance(data.images, np.memmap):
        index = np.sort(index)
    present = data.positive if data.class_present is None else data.class_present
    arrays = (data.images[index], data.masks[index], present[index].astype(np.float32))
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    if device.type == "cuda":
        with torch.cuda.device(device):  # a thread's current GPU is GPU 0 until set
            tensors = [t.pin_memory() for t in tensors]
    images, masks, present_t = (t.to(device, non_blocking=True) for t in tensors)
    return Batch(images.unsqueeze(1), masks.unsqueeze(1), present_t, index)


class Trainer:
    """One run: its options, model, data and loop state (built in this order: the model's
    initial weights depend on the seed and nothing else)."""

    def __init__(self, options: TrainOptions, out: Path, reporter: Reporter,
                 outputs: Outputs, dist: Distributed, *, resume: bool, overwrite: bool,
                 inference: dict[str, Any] | None) -> None:
        self.options, self.out, self.reporter, self.dist = options, out, reporter, dist
        self._meter = CpuMeter()  # the start-up is the first window the load is measured over
        self.stop, self.policy = StopRequest(), SavePolicy.parse(options.save_every)
        saved = check_run_folder(out, options, resume, overwrite)
        self.device = resolve_device(options.device,
                                     dist.local_rank if dist.enabled else None)
        dist.init(self.device)
        self.amp_dtype = amp_dtype = resolve_amp(options.amp, self.device)
        self.autocast = autocast_for(self.device, amp_dtype)
        seed_everything(options.seed, options.deterministic)
        cores = set_threads(options.threads)
        self._auto_cores = None if options.deterministic or self.device.type != "cpu" \
            else cores
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
                clear_run_files(out)  # a new run over an old one (--overwrite)
                write_config(out, self.config)
        self._prepare_loop(amp_dtype)
        self.state = TrainState()
        if saved is not None:
            self.state = TrainState.load(out / STATE, self.loop)
            load_weights(self.model, out / LAST)
            if self.state.progress is not None and not dist.main:
                # the saved sums are every process's, gathered in the main one
                self.state.progress.loss_sum, self.state.progress.loss_count = 0.0, 0
        self.train_model = self._wrap(self.model)
        # The training loss summed on the device since it was last read: (loss x images,
        # images, non-finite steps); read at saves and epoch ends, not every step.
        self._loss_pending: torch.Tensor | None = None
        self._best: dict[str, torch.Tensor] | None = None  # best weights not yet saved
        self._best_pending = self._dirty = False  # the best / anything changed since a save
        self._saved_at = self._threads_at = time.monotonic()
        self._epochs_unsaved = 0

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
        # More decoding threads than cores only queue for them (OpenCV's own threads besides).
        workers = min(options.workers, available_cores())
        self.train_set = cache_samples(split.train, self.geometry, keep_original=False,
                                       reader=reader, workers=workers)
        self.val_set = cache_samples(split.val, self.geometry, keep_original=True,
                                     reader=reader, workers=workers) \
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
        return choose_geometry(None, True, multiple,
                               image_shapes(samples, min(options.workers, available_cores())))

    def _prepare_loop(self, amp_dtype: torch.dtype | None) -> None:
        options = self.options
        self.model.to(self.device)
        if options.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.parameters = count_parameters(self.model)
        per_step = options.batch_size * self.dist.world
        batches_per_epoch = max(1, -(-len(self.train_set.ids) // per_step))
        steps_per_epoch = -(-batches_per_epoch // options.accumulate)
        self.loop = make_loop(options, self.model, steps_per_epoch, amp_dtype)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training pass calls: under DDP (told whether parameters go without
        a gradient, which a dry step finds) and/or torch.compile when asked."""
        unused: list[str] = []
        if self.dist.enabled or (self.options.deterministic and self.device.type == "cuda"):
            unused = dry_step(model, self._blank_batch(), self.autocast, self.options.arch)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=bool(unused))
        return torch.compile(model) if self.options.compile else model

    def _blank_batch(self) -> torch.Tensor:
        """Two zero images at the training geometry, as the loop feeds the network."""
        images = torch.zeros(2, 1, self.geometry.height, self.geometry.width,
                             device=self.device)
        return normalise_input(images, self.mean, self.std, self.options.in_channels,
                               self.options.channels_last)

    # ----------------------------------------------------------------------------------------
    # the loop

    def run(self) -> TrainResult:
        state = self.state
        with stop_on_signals(self.stop):  # a signal after the last epoch changes nothing
            stopped_early = self._run_epochs()
            if self.dist.main:
                self.save()  # the end of a run always saves (a no-op when nothing is new)
                plot_metrics(state.history, self.out / PLOT)
        best = state.best_dice if self.val_set is not None else float("nan")
        return TrainResult(self.out, state.best_epoch, best, state.history, self.parameters,
                           stopped_early)

    def _run_epochs(self) -> bool:
        """Every remaining epoch; whether --patience stopped the run early."""
        options, state = self.options, self.state
        for epoch in range(state.epoch + 1, options.epochs + 1):
            self._adapt_threads()
            started = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            val_loss, val_dice, presence_accuracy, class_dice = self.validate()
            record = EpochRecord(epoch, self.loop.optimizer.param_groups[0]["lr"], train_loss,
                                 val_loss, val_dice, presence_accuracy,
                                 time.perf_counter() - started, class_dice)
            improved = self._update_state(record)
            self._epoch_checkpoint(record, improved)
            self._report(self.reporter.epoch_end, record, improved)
            if epoch < options.epochs and self._stop_agreed():
                self._interrupt(epoch, None)
            if options.patience and self.val_set is not None and \
                    epoch - state.best_epoch >= options.patience:
                return True
        return False

    def _update_state(self, record: EpochRecord) -> bool:
        """Add the epoch to the state; whether it is the best so far (without validation the
        latest epoch is the best)."""
        state = self.state
        state.epoch, state.progress = record.epoch, None
        state.history.append(record)
        score = record.val_dice if self.val_set is not None else float(record.epoch)
        if score <= state.best_dice:
            return False
        state.best_dice, state.best_epoch = score, record.epoch
        return True

    def _epoch_batches(self) -> list[np.ndarray]:
        """The epoch's batches over every process (each takes every world-th image of each,
        in train_epoch), so that a saved epoch in progress resumes on any process."""
        dist = self.dist
        batches = epoch_batches(self.train_set.positive, self.options.batch_size * dist.world,
                                self.balance, self.loop.generator)
        return share_out(batches, dist.world)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training set (from where a saved epoch stopped, when resuming
        one); the mean training loss over every process."""
        options, loop, dist = self.options, self.loop, self.dist
        progress = self.state.progress or EpochProgress(self._epoch_batches(), 0)
        self.state.progress = progress
        batches = progress.batches
        self.reporter.epoch_start(epoch, options.epochs, len(batches))
        self.train_model.train()
        loop.optimizer.zero_grad(set_to_none=True)

        def load(index: np.ndarray) -> Batch:
            return load_batch(self.train_set, index[dist.rank::dist.world], self.device)

        for step, batch in enumerate(prefetch(batches[progress.step:], load),
                                     start=progress.step):
            self._add_loss(self.train_step(batch, epoch, step), len(batch.index))
            boundary = (step + 1) % options.accumulate == 0 or step + 1 == len(batches)
            if boundary:
                self._optimizer_step()
            progress.step = step + 1
            self._dirty = True
            self._report(self.reporter.step, consistent=boundary)
            if boundary and step + 1 < len(batches):
                self._between_steps(epoch, step + 1)
        self._read_loss()
        loss_sum, loss_count = dist.reduce_sum([progress.loss_sum, progress.loss_count],
                                               self.device)
        return loss_sum / max(1, loss_count)

    def train_step(self, batch: Batch, epoch: int, step: int) -> torch.Tensor:
        """Forward and backward of one batch (gradients accumulate); the detached loss. Its
        random numbers (augmentation, dropout) come from seeds of the run's seed, this process
        and the step: the processes of a DDP run augment differently, and a run resumed at any
        step draws what the uninterrupted run drew."""
        options = self.options
        keys = (self.dist.rank, epoch, step)
        seed_global(derived_seed(options.seed, GLOBAL_STREAM, *keys), self.device)
        generator = step_generator(derived_seed(options.seed, AUGMENT_STREAM, *keys),
                                   self.device)
        images, masks = augment_batch(batch.images.float() / 255, batch.masks.float(),
                                      self.augment, generator,
                                      classes=0 if self.classes is None else self.classes.count)
        x = normalise_input(images, self.mean, self.std, options.in_channels,
                            options.channels_last)
        target = self.targets(masks)
        with self.autocast():
            logits, presence = self.train_model(x)
        loss = self.loss_fn(logits, target)
        if presence is not None:
            loss = loss + options.presence_weight * F.binary_cross_entropy_with_logits(
                presence.float(), batch.present)
        self.loop.scaler.scale(loss / options.accumulate).backward()
        return loss.detach()

    def _add_loss(self, loss: torch.Tensor, images: int) -> None:
        """Sum a step's loss on the device (reading it would wait for the GPU every step). A
        non-finite loss is counted apart: under fp16 the gradient scaler skips its step."""
        finite = torch.isfinite(loss)
        step = torch.stack([torch.where(finite, loss.float() * images, 0.0),
                            finite.float() * images, (~finite).float()])
        step = step.double()
        self._loss_pending = step if self._loss_pending is None else self._loss_pending + step

    def _read_loss(self, gather: bool = False) -> None:
        """Bring the loss summed on the device into the epoch's progress: at the epoch's end,
        and before a save. ``gather`` (every process calls it, before a save in the middle of
        an epoch under DDP): the sums of every process go to the main one, which saves them.
        A non-finite loss ends the run, but under fp16, whose scaler skipped those steps and
        lowered its scale."""
        pending, self._loss_pending = self._loss_pending, None
        gather = gather and self.dist.enabled
        if gather:
            pending = torch.zeros(3, dtype=torch.float64, device=self.device) \
                if pending is None else pending
            torch.distributed.all_reduce(pending)
        if pending is None:
            return
        total, count, non_finite = pending.tolist()
        if non_finite and self.amp_dtype != torch.float16:
            raise NervesegError(f"epoch {self.state.epoch + 1}: the loss became non-finite in "
                                f"{non_finite:.0f} step(s); lower --lr or use --amp bf16/off")
        progress = self.state.progress
        if progress is not None and (self.dist.main or not gather):
            progress.loss_sum += total
            progress.loss_count += int(count)

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
        batch = load_batch(data, index, self.device)
        index = batch.index
        x = normalise_input(batch.images.float() / 255, self.mean, self.std,
                            options.in_channels, options.channels_last)
        with self.autocast():
            logits, presence = self.model(x)
        logits = logits.float()
        loss = float(self.loss_fn(logits, self.targets(batch.masks.float(), smoothing=False)))
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
        predicted = (presence.float() > 0).float()  # sigmoid > 0.5
        return loss, dices, float((predicted == batch.present).sum())

    # ----------------------------------------------------------------------------------------
    # saving, stopping, threads

    def _between_steps(self, epoch: int, step: int) -> None:
        """After an optimizer step inside an epoch: stop on a signal, save when the time has
        come, resize the thread team to the load. Under DDP the processes agree on both every
        STOP_POLL_STEPS steps (all stop and gather at the same step)."""
        due = self.dist.main and self.policy.time_due(time.monotonic() - self._saved_at)
        if not self.dist.enabled:
            stop = bool(self.stop)
        elif step % STOP_POLL_STEPS:
            stop = due = False
        else:
            stop, due = (v > 0 for v in self.dist.reduce_sum(
                [float(bool(self.stop)), float(due)], self.device))
        if stop:
            self._interrupt(epoch, self.state.progress)
        if due:
            self._read_loss(gather=True)
            self.save()
        self._adapt_threads(every=ADAPT_SECONDS)

    def _stop_agreed(self) -> bool:
        """Whether a signal asked to stop, in any process (all stop at the same step)."""
        if not self.dist.enabled:
            return bool(self.stop)
        return self.dist.reduce_sum([float(bool(self.stop))], self.device)[0] > 0

    def _epoch_checkpoint(self, record: EpochRecord, improved: bool) -> None:
        """The epoch's log line and metrics (always), and the checkpoint when the policy says
        so; otherwise the best weights are kept in memory until the next save."""
        if not self.dist.main:
            return
        self._epochs_unsaved += 1
        if improved:
            self._best = None  # the current weights, until they change
            self._best_pending = True
        atomic_write_text(self.out / METRICS, metrics_csv(self.state.history))
        with open(self.out / LOG, "a", encoding="utf-8") as log:
            log.write(format_record(record, improved) + "\n")
        if self.policy.epoch_due(self._epochs_unsaved, time.monotonic() - self._saved_at):
            self.save()
        elif improved:
            self._best = {k: v.detach().to("cpu", copy=True).contiguous()
                          for k, v in unwrap(self.model).state_dict().items()}

    def save(self) -> None:
        """The checkpoint: the last weights and the training state written together (a resume
        never pairs one step's weights with another's state), with the best weights when they
        changed since the last save."""
        if not self.dist.main or not self._dirty:
            return
        self._read_loss()  # raises before a save when the loss became non-finite
        from safetensors.torch import save as safetensors_bytes

        weights = weights_bytes(self.model)
        files = [(self.out / LAST, weights), (self.out / STATE, self.state.to_bytes(self.loop))]
        if self._best_pending:
            best = weights if self._best is None else safetensors_bytes(self._best)
            files.insert(0, (self.out / BEST, best))
        atomic_write_files(files)
        self._best, self._best_pending, self._dirty = None, False, False
        self._saved_at, self._epochs_unsaved = time.monotonic(), 0

    def _report(self, call: Callable[..., None], *args: Any, consistent: bool = True) -> None:
        """A reporter callback; one that raises (a crash, a test) at a point the run can be
        saved at leaves the run saved there, resumable."""
        try:
            call(*args)
        except BaseException:
            if consistent:
                self.save()
            raise

    def _interrupt(self, epoch: int, progress: EpochProgress | None) -> None:
        """Save and stop on the signal that asked for it (every process, once the main one
        has saved)."""
        self._read_loss(gather=True)
        self.save()
        self.dist.barrier(self.device)
        number = self.stop.signal_number or signal.SIGTERM
        where = f"in epoch {epoch} (step {progress.step}/{len(progress.batches)})" \
            if progress is not None else f"after epoch {epoch}"
        raise TrainingInterrupted(number, f"{signal.Signals(number).name} {where}: the state is "
                                  f"saved in {self.out}; continue with: nerveseg train --resume "
                                  f"{self.out}")

    def _adapt_threads(self, every: float = 0.0) -> None:
        """Size torch's thread team to the cores other processes leave free (automatic
        --threads only, and not with --deterministic, whose results must not depend on the
        load); measured over the time since the last call, at least ``every`` seconds."""
        if self._auto_cores is None or time.monotonic() - self._threads_at < every:
            return
        self._threads_at = time.monotonic()
        wanted = threads_for_load(self._auto_cores, self._meter.others_busy())
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
