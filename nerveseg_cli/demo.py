"""``nerveseg demo``: the pipeline on a fresh synth dataset, every intermediate file kept.

For now the chain is synth -> rle-decode -> rle-encode -> score; later issues extend it to
training and prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io import prepare_output_dir
from nerveseg_cli.rle import decode_csv_to_folder, encode_folder
from nerveseg_cli.score import ScoreReport, score, write_outputs
from nerveseg_cli.synth import synth


@dataclass(frozen=True)
class DemoResult:
    out: Path
    report: ScoreReport
    round_trip_identical: bool


def run_demo(out: str | Path = "nerveseg-demo", *, size: tuple[int, int] = (580, 420),
             subjects: int = 6, per_subject: int = 20, test: int = 24, seed: int = 0,
             overwrite: bool = False,
             on_step: Callable[[str], None] = lambda command: None) -> DemoResult:
    """Run the chain in ``out``; ``on_step`` receives each step's equivalent shell command."""
    out = prepare_output_dir(out, overwrite)
    data, decoded = out / "data", out / "decoded"
    reencoded, scores = out / "train_masks.reencoded.csv", out / "score"
    flag = " --overwrite" if overwrite else ""

    on_step(f"nerveseg synth {data} --subjects {subjects} --per-subject {per_subject} "
            f"--test {test} --size {size[0]}x{size[1]} --seed {seed}{flag}")
    synth(data, subjects=subjects, per_subject=per_subject, test=test, size=size, seed=seed,
          overwrite=overwrite)

    on_step(f"nerveseg rle-decode {data / 'train_masks.csv'} --out {decoded} "
            f"--size {size[0]}x{size[1]}{flag}")
    decode_csv_to_folder(data / "train_masks.csv", decoded, size=size, overwrite=overwrite)

    on_step(f"nerveseg rle-encode {decoded} --format train --out {reencoded}{flag}")
    encode_folder(decoded, reencoded, fmt="train", overwrite=overwrite)
    identical = reencoded.read_bytes() == (data / "train_masks.csv").read_bytes()
    if not identical:
        raise NervesegError(f"{reencoded} differs from {data / 'train_masks.csv'}: the RLE round "
                            "trip is broken")

    on_step(f"nerveseg score {decoded} {data / 'train'} --by subject --out {scores}{flag}")
    report = score(decoded, data / "train", size=size)
    write_outputs(report, scores, overwrite=overwrite, by_subject=True)
    return DemoResult(out, report, identical)
