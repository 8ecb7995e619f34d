"""``nerveseg train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_MODEL, app
from nerveseg_cli.cli._common import (
    JsonOutput,
    MinArea,
    Overwrite,
    Threshold,
    Workers,
    handle_errors,
    key_value_table,
    print_json,
    stderr,
    stdout,
)

P_MODEL, P_DATA, P_LOSS, P_AUG, P_OPT, P_RUN = (
    "Model", "Data and geometry", "Loss", "Augmentation (per image, on the device)",
    "Optimisation", "Speed and reproducibility")


class RichReporter:
    """A progress bar per epoch on a terminal, one line per epoch otherwise."""

    def __init__(self) -> None:
        self.progress = None
        self.task = None

    def stage(self, text: str) -> None:
        stderr.print(f"[dim]{text}...[/dim]")

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

    def epoch_end(self, record, best: bool) -> None:  # noqa: ANN001
        from nerveseg_cli.train.engine import format_record

        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        stderr.print(format_record(record, best), markup=False, highlight=False, soft_wrap=True)


@app.command("train", rich_help_panel=PANEL_MODEL)
@handle_errors
def train_command(
    ctx: typer.Context,
    manifest: Annotated[Path | None, typer.Argument(
        help="Manifest with a fold column (from `split`), or any image set with --fold all.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder to create.")
                   ] = None,
    fold: Annotated[str, typer.Option(help="Validation fold K, or 'all' (no validation).",
                                      rich_help_panel=P_DATA)] = "0",
    resume: Annotated[Path | None, typer.Option(
        help="Continue this run folder from its last completed epoch.")] = None,
    recipe: Annotated[str | None, typer.Option(
        help="Start from a shipped recipe (`nerveseg recipes`); flags given override it.")
    ] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", help="Start from a recipe JSON file (docs/recipes.md); flags given "
        "override it.", dir_okay=False)] = None,
    arch: Annotated[str, typer.Option(help="Architecture (any smp one, or a custom one).",
                                      rich_help_panel=P_MODEL)] = "unet",
    encoder: Annotated[str, typer.Option(help="Encoder: resnet34, efficientnet-b1, tu-...",
                                         rich_help_panel=P_MODEL)] = "resnet18",
    encoder_weights: Annotated[str, typer.Option(
        help="none, imagenet (downloads), or PATH to a local encoder state dict.",
        rich_help_panel=P_MODEL)] = "none",
    in_channels: Annotated[int, typer.Option(min=1, help="1 for grayscale, 3 to replicate it.",
                                             rich_help_panel=P_MODEL)] = 1,
    decoder_attention: Annotated[str | None, typer.Option(
        help="scse attention in the decoder (unet, unetplusplus).", rich_help_panel=P_MODEL)
    ] = None,
    presence_head: Annotated[bool, typer.Option(
        "--presence-head", help="Image-level 'nerve present' classifier on the deepest "
        "features.", rich_help_panel=P_MODEL)] = False,
    presence_weight: Annotated[float, typer.Option(help="Weight of the presence BCE.",
                                                   rich_help_panel=P_MODEL)] = 0.2,
    skip: Annotated[str | None, typer.Option(
        help="Skip connections: plain, or sharp (seed 003's fixed sharpening filter; unet, "
        "unetplusplus, unet-plain, ragcm).", rich_help_panel=P_MODEL, show_default=False)
    ] = None,
    width: Annotated[int | None, typer.Option(
        min=1, help="First-level filters of a from-scratch network (unet-plain 32, 35 = Wide "
        "U-Net; r2unet 16; inception-unet 32; fcn 64).", rich_help_panel=P_MODEL,
        show_default=False)] = None,
    batch_norm: Annotated[bool | None, typer.Option(
        "--batch-norm/--no-batch-norm", help="Batch norm in a from-scratch network "
        "\\[default: the architecture's own, docs/models.md]", rich_help_panel=P_MODEL,
        show_default=False)] = None,
    activation: Annotated[str | None, typer.Option(
        help="Decoder activation: relu, leakyrelu, elu, mish or swish (seed 000).",
        rich_help_panel=P_MODEL, show_default=False)] = None,
    context: Annotated[str | None, typer.Option(
        help="none, or rpa: seed 002's region-aware pyramid aggregation on the deepest "
        "features (unet).", rich_help_panel=P_MODEL, show_default=False)] = None,
    fusion: Annotated[str | None, typer.Option(
        help="none, or apf: seed 002's adaptive pyramid fusion of three decoder levels "
        "(unet).", rich_help_panel=P_MODEL, show_default=False)] = None,
    size: Annotated[str | None, typer.Option(
        help="Resize to WxH (a multiple of 32), e.g. 576x448. Default: pad.",
        rich_help_panel=P_DATA)] = None,
    pad: Annotated[bool, typer.Option("--pad", help="Pad to the architecture's multiple "
                                      "(the default when --size is not given).",
                                      rich_help_panel=P_DATA)] = False,
    balance: Annotated[str | None, typer.Option(
        help="P:N positives to negatives in every batch, e.g. 1:1.", rich_help_panel=P_DATA)
    ] = None,
    loss: Annotated[str, typer.Option(help="dice, bce, focal, tversky, lovasz joined by +.",
                                      rich_help_panel=P_LOSS)] = "bce+dice",
    loss_weights: Annotated[str | None, typer.Option(help="Comma-separated weights, e.g. 1,1.",
                                                     rich_help_panel=P_LOSS)] = None,
    focal_alpha: Annotated[float, typer.Option(rich_help_panel=P_LOSS,
                                               help="Focal alpha (<0: none).")] = 0.25,
    focal_gamma: Annotated[float, typer.Option(rich_help_panel=P_LOSS,
                                               help="Focal gamma.")] = 2.0,
    tversky_alpha: Annotated[float, typer.Option(rich_help_panel=P_LOSS,
                                                 help="Tversky false-positive weight.")] = 0.5,
    tversky_beta: Annotated[float, typer.Option(rich_help_panel=P_LOSS,
                                                help="Tversky false-negative weight.")] = 0.5,
    ems_kernel: Annotated[int, typer.Option(min=0, rich_help_panel=P_LOSS,
                                            help="Erosion mask smoothing kernel (seed 000: 9)."
                                            )] = 0,
    ems_epsilon: Annotated[float, typer.Option(min=0.0, max=1.0, rich_help_panel=P_LOSS,
                                               help="EMS: interior target 1 - eps (seed 000: "
                                               "0.1).")] = 0.0,
    hflip: Annotated[float, typer.Option(min=0.0, max=1.0, rich_help_panel=P_AUG,
                                         help="Horizontal flip probability.")] = 0.5,
    vflip: Annotated[float, typer.Option(min=0.0, max=1.0, rich_help_panel=P_AUG,
                                         help="Vertical flip probability.")] = 0.5,
    rotate: Annotated[str, typer.Option(rich_help_panel=P_AUG,
                                        help="DEG[:P] random rotation.")] = "0",
    scale: Annotated[str, typer.Option(rich_help_panel=P_AUG,
                                       help="R[:P] random zoom by up to R.")] = "0",
    brightness: Annotated[str, typer.Option(rich_help_panel=P_AUG,
                                            help="R[:P] brightness factor 1±R.")] = "0",
    noise: Annotated[str, typer.Option(rich_help_panel=P_AUG,
                                       help="SIGMA[:P] Gaussian noise on [0,1] images.")] = "0",
    optimizer: Annotated[str, typer.Option(rich_help_panel=P_OPT,
                                           help="adamw, adam, sgd or rmsprop.")] = "adamw",
    lr: Annotated[float, typer.Option(rich_help_panel=P_OPT, help="Peak learning rate.")
                  ] = 2e-3,
    weight_decay: Annotated[float, typer.Option(rich_help_panel=P_OPT, help="Weight decay.")
                            ] = 1e-4,
    momentum: Annotated[float, typer.Option(rich_help_panel=P_OPT,
                                            help="Momentum (sgd, rmsprop).")] = 0.9,
    scheduler: Annotated[str, typer.Option(rich_help_panel=P_OPT,
                                           help="cosine, step, poly or none.")] = "cosine",
    step_gamma: Annotated[float, typer.Option(rich_help_panel=P_OPT,
                                              help="Step decay factor per epoch.")] = 0.95,
    poly_power: Annotated[float, typer.Option(rich_help_panel=P_OPT, help="Poly power.")
                          ] = 0.9,
    warmup_epochs: Annotated[float, typer.Option(min=0.0, rich_help_panel=P_OPT,
                                                 help="Linear warm-up length.")] = 1.0,
    epochs: Annotated[int, typer.Option(min=1, rich_help_panel=P_OPT, help="Epochs.")] = 40,
    batch_size: Annotated[int, typer.Option(min=1, rich_help_panel=P_OPT,
                                            help="Images per step (per process).")] = 8,
    accumulate: Annotated[int, typer.Option(min=1, rich_help_panel=P_OPT,
                                            help="Batches per optimizer step.")] = 1,
    patience: Annotated[int, typer.Option(min=0, rich_help_panel=P_OPT,
                                          help="Stop after N epochs without a better "
                                          "validation Dice (0: never).")] = 0,
    grad_clip: Annotated[float, typer.Option(min=0.0, rich_help_panel=P_OPT,
                                             help="Clip the gradient norm (0: off).")] = 1.0,
    threshold: Threshold = None,
    min_area: MinArea = None,
    amp: Annotated[str, typer.Option(rich_help_panel=P_RUN,
                                     help="auto (bf16 on CUDA when supported), bf16, fp16, "
                                     "off.")] = "auto",
    channels_last: Annotated[bool, typer.Option("--channels-last", rich_help_panel=P_RUN,
                                                help="channels-last memory format.")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", rich_help_panel=P_RUN,
                                                help="torch.compile the model.")] = False,
    workers: Workers = 4,
    device: Annotated[str, typer.Option(rich_help_panel=P_RUN,
                                        help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(rich_help_panel=P_RUN, help="Random seed.")] = 0,
    deterministic: Annotated[bool, typer.Option("--deterministic", rich_help_panel=P_RUN,
                                                help="Deterministic algorithms (slower).")
                             ] = False,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Train one model on the folds other than K, validating on fold K every epoch."""
    from nerveseg_cli.errors import NervesegError
    from nerveseg_cli.train import TrainOptions, train

    values = dict(ctx.params)
    values["compile"] = values.pop("compile_model")
    for key in ("out", "resume", "overwrite", "json_output", "config_file"):
        values.pop(key)
    values["manifest"] = str(manifest) if manifest else ""
    if loss_weights:
        try:
            values["loss_weights"] = [float(w) for w in loss_weights.split(",")]
        except ValueError:
            raise NervesegError(f"--loss-weights {loss_weights!r} is not comma-separated "
                                "numbers") from None
    # Options given on this command line (they win over a recipe and must match on resume).
    explicit = {k for k in ctx.params
                if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    explicit = {"compile" if k == "compile_model" else k for k in explicit}
    inference = None
    if recipe is not None or config_file is not None:
        from nerveseg_cli.recipes import load_recipe, merge_recipe, read_recipe_file

        if recipe is not None and config_file is not None:
            raise NervesegError("--recipe and --config exclude each other")
        if resume is not None:
            raise NervesegError("--resume takes the options of the run; leave out --recipe "
                                "and --config")
        chosen = load_recipe(recipe) if recipe is not None else read_recipe_file(config_file)
        values = merge_recipe(values, chosen, explicit)
        inference = chosen.inference()
        explicit |= set(chosen.train)
    values["threshold"] = 0.5 if values["threshold"] is None else values["threshold"]
    values["min_area"] = 0 if values["min_area"] is None else values["min_area"]
    if "encoder" in explicit:
        from nerveseg_cli.models import arch_spec

        if not arch_spec(values["arch"]).encoder:
            raise NervesegError(f"--encoder {values['encoder']} does not apply to --arch "
                                f"{values['arch']} (it has its own encoder; see "
                                "docs/models.md)")
    if resume is not None:
        from nerveseg_cli.runs import read_config

        saved = read_config(resume).training
        # Options given on this command line must match the run; the rest come from it.
        values = {k: (values[k] if k in explicit else saved.get(k, values[k]))
                  for k in values}
        run = resume
    else:
        if manifest is None or out is None:
            raise NervesegError("train needs MANIFEST and --out (or --resume RUN)")
        run = out
    result = train(TrainOptions.from_dict(values), run, overwrite=overwrite,
                   resume=resume is not None, reporter=RichReporter(), inference=inference)
    summary = {"run": str(result.run), "best_epoch": result.best_epoch,
               "best_val_dice": result.best_dice, "epochs_run": len(result.history),
               "stopped_early": result.stopped_early, "parameters": result.parameters}
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("train", summary))
