"""``nerveseg predict``.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_INFERENCE, command
from nerveseg_cli.cli._common import (
    JsonOutput,
    MinArea,
    Overwrite,
    PostprocessFile,
    PresenceFrom,
    PresenceThreshold,
    Threshold,
    Workers,
    key_value_table,
    out_option,
    print_json,
    progress_bar,
    stdout,
)


# One parameter per option: this is Typer's declaration of the command line.
@command("predict", PANEL_INFERENCE)
def predict_command(
    paths: Annotated[list[Path], typer.Argument(
        metavar="RUN [RUN ...] IMAGES",
        help="One or more run folders (or exported NAME.onnx models, with --engine "
        "onnxruntime), then the image set.")],
    out: Annotated[Path, out_option(help="Probability folder to write.")],
    tta: Annotated[str | None, typer.Option(
        help="none, hflip, or flips (identity, h, v, both). \\[default: the first run's "
        "recipe, else none]", show_default=False)] = None,
    tta_merge: Annotated[str | None, typer.Option(
        help="Merge TTA variants: mean or asme. \\[default: recipe, else mean]",
        show_default=False)] = None,
    merge: Annotated[str | None, typer.Option(
        help="Merge runs: mean or asme. \\[default: recipe, else mean]", show_default=False)
    ] = None,
    asme_base: Annotated[float | None, typer.Option(
        help="ASME base (seed 000: 100). \\[default: recipe, else 100]", show_default=False)
    ] = None,
    presence_threshold: PresenceThreshold = None,
    presence_from: PresenceFrom = None,
    crf: Annotated[bool | None, typer.Option(
        "--crf/--no-crf", help="Refine every map with the dense CRF (the recipe's parameters, "
        "else `nerveseg crf`'s defaults). \\[default: as the first run's recipe says]",
        show_default=False)] = None,
    masks: Annotated[Path | None, typer.Option(
        help="Also write masks here (--threshold, --min-area, --postprocess): binary masks, "
        "or label maps (palette PNGs, pixel = class index) with several classes.")] = None,
    overlay_video: Annotated[Path | None, typer.Option(
        metavar="OUT.mp4", help="IMAGES is a video: also write it with the predicted outlines "
        "(a colour per class), at its frame rate (.mp4 or .avi).")] = None,
    threshold: Threshold = None,
    min_area: MinArea = None,
    postprocess: PostprocessFile = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per device batch.")] = 8,
    engine: Annotated[str, typer.Option(
        help="torch, or onnxruntime: exported models, or run folders exported on the fly.")
    ] = "torch",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[str, typer.Option(help="auto, bf16, fp16 or off (torch).")] = "auto",
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="channels-last memory format (torch).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip ids already written.")
                      ] = False,
    part: Annotated[str | None, typer.Option(
        help="K/N: process the K-th of N deterministic shares (several GPUs or machines).")
    ] = None,
    out_of_fold: Annotated[bool, typer.Option(
        "--out-of-fold", help="IMAGES is a split manifest: predict each image only with the "
        "run that validated on its fold (train --fold K), for out-of-fold scores.")] = False,
    workers: Workers = 4,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Predict probability maps with one or more runs, with flip TTA and ASME.

    Options not given take the values recorded by the first run's recipe (train --recipe),
    then the defaults shown."""
    from nerveseg_cli.errors import NervesegError
    from nerveseg_cli.inference.predict import PredictOptions, predict
    from nerveseg_cli.io.video import is_video

    if len(paths) < 2:
        raise NervesegError("predict needs RUN [RUN ...] IMAGES")
    *runs, images = paths
    options = PredictOptions(tta=tta, tta_merge=tta_merge, merge=merge, asme_base=asme_base,
                             threshold=threshold, min_area=min_area,
                             presence_threshold=presence_threshold, crf=crf,
                             postprocess=postprocess, presence_from=presence_from, masks=masks,
                             part=part, out_of_fold=out_of_fold, batch_size=batch_size,
                             device=device, amp=amp, channels_last=channels_last,
                             workers=workers, engine=engine, overlay_video=overlay_video)
    unit = "frames" if is_video(images) else "images"
    with progress_bar(None, "predict", unit) as advance:
        result = predict(runs, images, out, options, resume=resume, overwrite=overwrite,
                         progress=advance)
    summary = {"written": result.written, "skipped (resume)": result.skipped,
               f"{unit}_per_second": round(result.images_per_second, 2),
               "with_presence": len(result.presence), "out": str(out),
               **({"overlay_video": str(overlay_video)} if overlay_video else {})}
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("predict", summary))
