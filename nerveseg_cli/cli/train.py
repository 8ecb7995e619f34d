"""``nerveseg train``: parses the options, resolves them with a recipe or the run to resume
(:func:`~nerveseg_cli.train.resolution.resolve_train_options`), trains, prints.

Every default is read from :class:`~nerveseg_cli.train.options.TrainOptions` (``_D``), so
there is one place to change one.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nerveseg_cli.cli._app import PANEL_TRAINING, command
from nerveseg_cli.cli._common import (
    ClassesOption,
    JsonOutput,
    Label,
    MinArea,
    Overwrite,
    Threshold,
    Workers,
    key_value_table,
    out_option,
    print_json,
    stderr,
    stdout,
)
from nerveseg_cli.train.options import DEFAULTS as _D
from nerveseg_cli.train.progress import EpochRecord, Reporter, format_record

P_MODEL, P_DATA, P_LOSS, P_AUG, P_OPT, P_RUN = (
    "Model", "Data and geometry", "Loss", "Augmentation (per image, on the device)",
    "Optimisation", "Speed and reproducibility")
# Parameters whose CLI name differs from the TrainOptions field.
RENAMED = {"compile_model": "compile"}
# Parameters that are not train options.
NOT_OPTIONS = ("out", "resume", "continue_run", "overwrite", "json_output", "config_file",
               "recipe")


def _opt(panel: str, help: str, *names: str, **kwargs: Any) -> Any:
    """A train option in one of the help panels above."""
    return typer.Option(*names, help=help, rich_help_panel=panel, **kwargs)


class RichReporter(Reporter):
    """A progress bar per epoch on a terminal, one line per epoch otherwise."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None

    def stage(self, text: str) -> None:
        if stderr.is_terminal:  # progress for a person; a log or a pipe gets the epoch lines
            stderr.print(f"{text}...", style="dim", markup=False, highlight=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if stderr.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(),
                                     MofNCompleteColumn(), console=stderr, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=steps)

    def step(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        """Take the epoch's bar off the terminal (a run stopped in the middle of an epoch)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def epoch_end(self, record: EpochRecord, best: bool) -> None:
        self.close()
        stderr.print(format_record(record, best), markup=False, highlight=False, soft_wrap=True)


# One parameter per option: this is Typer's declaration of the command line.
@command("train", PANEL_TRAINING)
def train_command(
    ctx: typer.Context,
    manifest: Annotated[Path | None, typer.Argument(
        help="Manifest with a fold column (from `split`), or any image set with --fold all.",
        show_default=False)] = None,
    out: Annotated[Path | None, out_option(help="Run folder to create.")] = None,
    fold: Annotated[str, _opt(P_DATA, "Validation fold K, or 'all' (no validation).")
                    ] = _D.fold,
    resume: Annotated[Path | None, typer.Option(
        help="Continue this run folder from its last saved state.", show_default=False)
    ] = None,
    continue_run: Annotated[bool, typer.Option(
        "--continue", help="With MANIFEST and --out as for a new run: start it, continue it "
        "from its last save, or say it is complete (the same command line every time: "
        "retries, re-queued jobs).")] = False,
    recipe: Annotated[str | None, typer.Option(
        help="Start from a shipped recipe (`nerveseg recipes`); flags given override it.",
        show_default=False)] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", help="Start from a recipe JSON file (docs/recipes.md); flags given "
        "override it.", dir_okay=False, show_default=False)] = None,
    arch: Annotated[str, _opt(P_MODEL, "Architecture (any smp one, or a custom one).")
                    ] = _D.arch,
    encoder: Annotated[str, _opt(P_MODEL, "Encoder: resnet34, efficientnet-b1, tu-...")
                       ] = _D.encoder,
    encoder_weights: Annotated[str, _opt(
        P_MODEL, "none, imagenet (downloads), or PATH to a local encoder state dict.")
    ] = _D.encoder_weights,
    in_channels: Annotated[int, _opt(P_MODEL, "1 for grayscale, 3 to replicate it.", min=1)
                           ] = _D.in_channels,
    decoder_attention: Annotated[str | None, _opt(
        P_MODEL, "scse attention in the decoder (unet, unetplusplus).", show_default=False)
    ] = _D.decoder_attention,
    presence_head: Annotated[bool, _opt(
        P_MODEL, "Image-level 'nerve present' classifier on the deepest features.",
        "--presence-head")] = _D.presence_head,
    presence_weight: Annotated[float, _opt(P_MODEL, "Weight of the presence BCE.")
                               ] = _D.presence_weight,
    skip: Annotated[str | None, _opt(
        P_MODEL, "Skip connections: plain, or sharp (seed 003's fixed sharpening filter; unet, "
        "unetplusplus, unet-plain, ragcm).", show_default=False)] = _D.skip,
    width: Annotated[int | None, _opt(
        P_MODEL, "First-level filters of a from-scratch network (unet-plain 32, 35 = Wide "
        "U-Net; r2unet 16; inception-unet 32; fcn 64).", min=1, show_default=False)
    ] = _D.width,
    batch_norm: Annotated[bool | None, _opt(
        P_MODEL, "Batch norm in a from-scratch network \\[default: the architecture's own, "
        "docs/models.md]", "--batch-norm/--no-batch-norm", show_default=False)
    ] = _D.batch_norm,
    activation: Annotated[str | None, _opt(
        P_MODEL, "Decoder activation: relu, leakyrelu, elu, mish or swish (seed 000).",
        show_default=False)] = _D.activation,
    context: Annotated[str | None, _opt(
        P_MODEL, "none, or rpa: seed 002's region-aware pyramid aggregation on the deepest "
        "features (unet).", show_default=False)] = _D.context,
    fusion: Annotated[str | None, _opt(
        P_MODEL, "none, or apf: seed 002's adaptive pyramid fusion of three decoder levels "
        "(unet).", show_default=False)] = _D.fusion,
    decoders: Annotated[str | None, _opt(
        P_MODEL, "shared, or per-class: with --classes, one half-width decoder per class on "
        "the shared encoder (unet; the default there but with --fusion apf; docs/train.md).",
        show_default=False)] = _D.decoders,
    label: Label = _D.label,
    classes: ClassesOption = _D.classes,
    multilabel: Annotated[bool, _opt(
        P_DATA, "With --classes: a sigmoid per class (classes may overlap) instead of a "
        "softmax.", "--multilabel")] = _D.multilabel,
    size: Annotated[str | None, _opt(
        P_DATA, "Resize to WxH (a multiple of 32), e.g. 576x448. Default: pad.",
        metavar="WxH", show_default=False)] = _D.size,
    pad: Annotated[bool, _opt(P_DATA, "Pad to the architecture's multiple (the default when "
                              "--size is not given).", "--pad")] = _D.pad,
    balance: Annotated[str | None, _opt(
        P_DATA, "P:N positives to negatives in every batch, e.g. 1:1.", metavar="P:N",
        show_default=False)] = _D.balance,
    loss: Annotated[str, _opt(P_LOSS, "dice, bce, focal, tversky, lovasz joined by +.")
                    ] = _D.loss,
    loss_weights: Annotated[str | None, _opt(P_LOSS, "Comma-separated weights, e.g. 1,1.")] = None,
    focal_alpha: Annotated[float, _opt(P_LOSS, "Focal alpha (<0: none).")] = _D.focal_alpha,
    focal_gamma: Annotated[float, _opt(P_LOSS, "Focal gamma.")] = _D.focal_gamma,
    tversky_alpha: Annotated[float, _opt(P_LOSS, "Tversky false-positive weight.")
                             ] = _D.tversky_alpha,
    tversky_beta: Annotated[float, _opt(P_LOSS, "Tversky false-negative weight.")
                            ] = _D.tversky_beta,
    ems_kernel: Annotated[int, _opt(P_LOSS, "Erosion mask smoothing kernel (seed 000: 9).",
                                    min=0)] = _D.ems_kernel,
    ems_epsilon: Annotated[float, _opt(P_LOSS, "EMS: interior target 1 - eps (seed 000: 0.1).",
                                       min=0.0, max=1.0)] = _D.ems_epsilon,
    hflip: Annotated[float, _opt(P_AUG, "Horizontal flip probability.", min=0.0, max=1.0)
                     ] = _D.hflip,
    vflip: Annotated[float, _opt(P_AUG, "Vertical flip probability.", min=0.0, max=1.0)
                     ] = _D.vflip,
    rotate: Annotated[str, _opt(P_AUG, "DEG[:P] random rotation.")] = _D.rotate,
    scale: Annotated[str, _opt(P_AUG, "R[:P] random zoom by up to R.")] = _D.scale,
    brightness: Annotated[str, _opt(P_AUG, "R[:P] brightness factor 1±R.")] = _D.brightness,
    noise: Annotated[str, _opt(P_AUG, "SIGMA[:P] Gaussian noise on [0,1] images.")] = _D.noise,
    optimizer: Annotated[str, _opt(P_OPT, "adamw, adam, sgd or rmsprop.")] = _D.optimizer,
    lr: Annotated[float, _opt(P_OPT, "Peak learning rate.")] = _D.lr,
    weight_decay: Annotated[float, _opt(P_OPT, "Weight decay.")] = _D.weight_decay,
    momentum: Annotated[float, _opt(P_OPT, "Momentum (sgd, rmsprop).")] = _D.momentum,
    scheduler: Annotated[str, _opt(P_OPT, "cosine, step, poly or none.")] = _D.scheduler,
    step_gamma: Annotated[float, _opt(P_OPT, "Step decay factor per epoch.")] = _D.step_gamma,
    poly_power: Annotated[float, _opt(P_OPT, "Poly power.")] = _D.poly_power,
    warmup_epochs: Annotated[float, _opt(P_OPT, "Linear warm-up length.", min=0.0)
                             ] = _D.warmup_epochs,
    epochs: Annotated[int, _opt(P_OPT, "Epochs.", min=1)] = _D.epochs,
    batch_size: Annotated[int, _opt(P_OPT, "Images per step (per process).", min=1)
                          ] = _D.batch_size,
    accumulate: Annotated[int, _opt(P_OPT, "Batches per optimizer step.", min=1)
                          ] = _D.accumulate,
    patience: Annotated[int, _opt(P_OPT, "Stop after N epochs without a better validation "
                                  "Dice (0: never).", min=0)] = _D.patience,
    grad_clip: Annotated[float, _opt(P_OPT, "Clip the gradient norm (0: off).", min=0.0)
                         ] = _D.grad_clip,
    threshold: Threshold = None,
    min_area: MinArea = None,
    amp: Annotated[str, _opt(P_RUN, "auto (bf16 on CUDA when supported), bf16, fp16, off.")
                   ] = _D.amp,
    channels_last: Annotated[bool, _opt(P_RUN, "channels-last memory format.",
                                        "--channels-last")] = _D.channels_last,
    compile_model: Annotated[bool, _opt(P_RUN, "torch.compile the model.", "--compile")
                             ] = _D.compile,
    workers: Workers = _D.workers,
    threads: Annotated[int, _opt(
        P_RUN, "torch's CPU threads; 0: OMP_NUM_THREADS if set, else the cores available, "
        "fewer while other processes keep some busy (docs/train.md).", min=0)] = _D.threads,
    save_every: Annotated[str, _opt(
        P_RUN, "Save the checkpoint every N epochs and/or a time (10m, 1h, 5,10m), or 'end'; "
        "always at the end, on Ctrl-C and SIGTERM.", metavar="N|TIME")] = _D.save_every,
    device: Annotated[str, _opt(P_RUN, "auto, cpu, cuda or cuda:N.")] = _D.device,
    seed: Annotated[int, _opt(P_RUN, "Random seed.")] = _D.seed,
    deterministic: Annotated[bool, _opt(P_RUN, "Deterministic algorithms (slower).",
                                        "--deterministic")] = _D.deterministic,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Train one model on the folds other than K, validating on fold K every epoch."""
    from nerveseg_cli.errors import NervesegError
    from nerveseg_cli.train.engine import train
    from nerveseg_cli.train.resolution import resolve_train_options
    from nerveseg_cli.train.signals import TrainingInterrupted

    if resume is None and (manifest is None or out is None):
        raise NervesegError("train needs MANIFEST and --out (or --resume RUN)")
    if continue_run:
        resume, overwrite = _continuation(out, resume, overwrite)
    given, explicit = _given_options(ctx)
    # --continue resolves the command line as for a new run (it is the first start's, recipe
    # included) and train() then compares it with the saved options
    resolved = resolve_train_options(given, explicit, recipe=recipe, config_file=config_file,
                                     resume=None if continue_run else resume)
    reporter = RichReporter()
    try:
        result = train(resolved.options, resume or out, overwrite=overwrite,
                       resume=resume is not None, reporter=reporter,
                       inference=resolved.inference)
    except TrainingInterrupted as stopped:  # not an error: the run is saved, resumable
        reporter.close()
        stderr.print(f"interrupted: {stopped}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(stopped.exit_code) from None
    if result.already_complete:
        stderr.print(f"{result.run}: complete ({len(result.history)} epochs"
                     + (", stopped early by --patience" if result.stopped_early else "")
                     + "): nothing to train", markup=False, highlight=False, soft_wrap=True)
    validated = any(record.validated for record in result.history)
    # without validation there is no best: model.safetensors holds the last epoch
    summary = {"run": str(result.run),
               "best_epoch": result.best_epoch if validated else None,
               "best_val_dice": result.best_dice if validated else None,
               **({} if validated else {"model": "last epoch (no validation)"}),
               "epochs_run": len(result.history),
               "stopped_early": result.stopped_early, "parameters": result.parameters}
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("train", summary))


def _continuation(out: Path | None, resume: Path | None,
                  overwrite: bool) -> tuple[Path | None, bool]:
    """``--continue``: the run to resume (or None) and whether to overwrite, from what the run
    folder holds; says which on stderr."""
    from nerveseg_cli.errors import NervesegError
    from nerveseg_cli.train.continuation import plan_continuation

    if resume is not None or overwrite:
        raise NervesegError("--continue decides from the run folder whether to start or resume: "
                            "give MANIFEST and --out, without --resume or --overwrite")
    plan = plan_continuation(out)  # type: ignore[arg-type]  (checked by the caller)
    stderr.print(plan.message, markup=False, highlight=False, soft_wrap=True)
    return (out if plan.resume else None), plan.overwrite


def _given_options(ctx: typer.Context) -> tuple[dict[str, Any], set[str]]:
    """The command line as TrainOptions fields, and the fields the user typed (they win over a
    recipe and must match the run on --resume)."""
    from nerveseg_cli.lists import parse_list

    given = {RENAMED.get(k, k): v for k, v in ctx.params.items() if k not in NOT_OPTIONS}
    given["manifest"] = str(given["manifest"]) if given["manifest"] else ""
    text = given["loss_weights"]
    if text:
        given["loss_weights"] = parse_list(text, "--loss-weights", float, what="a number",
                                           distinct=False, usage="comma-separated numbers, "
                                           "one per --loss term, e.g. 1,0.5")
    explicit = {RENAMED.get(k, k) for k in ctx.params
                if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    return given, explicit
