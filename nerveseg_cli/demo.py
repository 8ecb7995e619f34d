"""``nerveseg demo``: the whole competition pipeline on a fresh synth dataset, every
intermediate file kept in OUT as a worked example.

synth -> dedupe -> split (2 subject-grouped folds) -> train each fold (the ``nerve-default``
recipe scaled down to a CPU: no ImageNet download, a small encoder and input size, few epochs)
-> predict the out-of-fold images and the test set with flip TTA -> ensemble the folds' test
maps (ASME) -> crf -> score the out-of-fold maps, with and without the CRF, over a threshold and
min-area sweep, and the all-empty submission -> rle-encode the test maps of the better variant
with its chosen post-processing, in the order of the sample submission.

Every step calls the library function behind one ``nerveseg`` command and reports that command
to ``on_step`` before it starts, so the printed steps are a shell script that redoes the demo.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nerveseg_cli.crf import crf
from nerveseg_cli.dedupe import dedupe
from nerveseg_cli.dedupe import write_outputs as write_dedupe_outputs
from nerveseg_cli.ensemble import ensemble
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io import atomic_write_text, parse_size, prepare_output_dir
from nerveseg_cli.predict import predict
from nerveseg_cli.recipes import load_recipe, merge_recipe
from nerveseg_cli.rle import EncodeResult, encode_folder
from nerveseg_cli.score import ScoreReport, score, write_outputs, write_postprocess
from nerveseg_cli.split import split, write_split
from nerveseg_cli.synth import synth

if TYPE_CHECKING:
    from nerveseg_cli.train import EpochRecord

RECIPE = "nerve-default"
FOLDS = 2
SWEEP_THRESHOLDS = "0.3:0.7:0.05"
KAGGLE_AREA = 580 * 420
KAGGLE_MIN_AREA_GRID = (5000, 250)  # sweep 0..5000 px by 250 at 580x420, scaled by image area
MARKER = "demo.json"
# What the demo writes into OUT; only these are cleared by --overwrite, and only in a folder
# that a previous demo marked with demo.json.
OUTPUTS = ("data", "dedupe", "folds.csv", "runs", "oof", "test", "score", "submission.csv",
           MARKER)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs; the defaults finish in about two minutes on 2 CPU cores."""

    size: tuple[int, int] = (580, 420)  # synthetic image size (W, H)
    train_size: tuple[int, int] = (128, 96)  # network input size, multiples of 32
    subjects: int = 6
    per_subject: int = 20
    test: int = 24
    epochs: int = 8
    encoder: str = "resnet18"
    seed: int = 0
    device: str = "auto"

    def validate(self) -> DemoSettings:
        if any(v % 32 for v in self.train_size):
            raise NervesegError(f"--train-size {self.train_size[0]}x{self.train_size[1]}: "
                                "both sides must be multiples of 32 (e.g. 128x96)")
        if self.subjects < FOLDS:
            raise NervesegError(f"--subjects {self.subjects}: the demo's {FOLDS} folds need "
                                f"at least {FOLDS} subjects")
        if self.per_subject < 6:
            raise NervesegError(f"--per-subject {self.per_subject}: at least 6 frames, so that "
                                "synth plants the label conflicts dedupe finds")
        if self.test < 1 or self.epochs < 1:
            raise NervesegError("--test and --epochs must be at least 1")
        return self

    @property
    def min_area_sweep(self) -> str:
        """0:5000:250 at Kaggle's 580x420, scaled to the image area (21 values)."""
        top, step = KAGGLE_MIN_AREA_GRID
        scale = self.size[0] * self.size[1] / KAGGLE_AREA
        step = max(1, round(step * scale))
        return f"0:{step * (top // KAGGLE_MIN_AREA_GRID[1])}:{step}"


@dataclass(frozen=True)
class DemoStep:
    """One step: the equivalent shell command, and a note on why it looks the way it does."""

    command: str
    note: str = ""


@dataclass(frozen=True)
class ScoreLine:
    """One row of the final table: a prediction folder scored out of fold."""

    name: str
    predictions: Path
    threshold: float | None  # None: no post-processing applies (the all-empty submission)
    min_area: int | None
    dice: float
    postprocess: Path | None = None  # the sweep's postprocess.json


@dataclass
class DemoResult:
    out: Path
    settings: DemoSettings
    scores: list[ScoreLine]  # all-empty first, then out-of-fold without and with the CRF
    chosen: ScoreLine
    chosen_report: ScoreReport  # the chosen variant scored at its chosen post-processing
    submission: Path
    encoded: EncodeResult
    fold_val_dice: list[float]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def empty_dice(self) -> float:
        return self.scores[0].dice

    @property
    def beats_empty(self) -> bool:
        """Whether the trained models beat the all-empty submission out of fold."""
        return self.chosen.dice > self.empty_dice


def shell(*words: object) -> str:
    """A copyable shell command line from its words."""
    return " ".join(shlex.quote(str(w)) for w in words)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def clear_previous_demo(out: Path) -> None:
    """For --overwrite: remove what an earlier demo wrote in ``out`` (its demo.json says one
    did), so that no stale map from other settings leaks into this run; nothing else is
    touched. A folder no demo made must not hold any of the demo's names: the demo never
    replaces files it did not write."""
    if not (out / MARKER).is_file():
        clashes = [name for name in OUTPUTS if (out / name).exists()]
        if clashes:
            raise NervesegError(f"{out / clashes[0]} exists and {out} was not made by nerveseg "
                                f"demo (no {MARKER}); choose another folder")
        return
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run_demo(out: str | Path = "nerveseg-demo", settings: DemoSettings = DemoSettings(), *,
             overwrite: bool = False, on_step: Callable[[DemoStep], None] = lambda step: None,
             on_epoch: Callable[[int, EpochRecord], None] | None = None) -> DemoResult:
    """Run the pipeline in ``out``; ``on_step`` receives each step before it runs, ``on_epoch``
    (fold, EpochRecord) each training epoch. Raises NervesegError on bad settings."""
    from nerveseg_cli.train import TrainOptions, train

    settings.validate()
    out = Path(out)
    if overwrite and out.is_dir():
        clear_previous_demo(out)
    out = prepare_output_dir(out, overwrite)
    atomic_write_text(out / MARKER, json.dumps({"command": "demo", "complete": False,
                                                "settings": asdict(settings)}, indent=2) + "\n")
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str, command: str, note: str = "") -> None:
        seconds[name] = time.perf_counter()
        on_step(DemoStep(command, note))

    def done(name: str) -> None:
        seconds[name] = time.perf_counter() - seconds[name]

    data, audit, folds = out / "data", out / "dedupe", out / "folds.csv"
    s = settings

    step("synth", shell("nerveseg", "synth", data, "--subjects", s.subjects, "--per-subject",
                        s.per_subject, "--test", s.test, "--size", _size(s.size), "--seed",
                        s.seed),
         "a fresh Kaggle-layout dataset: train/ (images + masks), test/, sample_submission.csv")
    synth(data, subjects=s.subjects, per_subject=s.per_subject, test=s.test, size=s.size,
          seed=s.seed)
    done("synth")

    step("dedupe", shell("nerveseg", "dedupe", data / "train", "--out", audit),
         "drop the duplicate frames whose masks disagree (synth plants some)")
    write_dedupe_outputs(dedupe(data / "train"), audit)
    done("dedupe")

    step("split", shell("nerveseg", "split", audit / "manifest.csv", "--folds", FOLDS, "--seed",
                        s.seed, "--out", folds),
         "folds grouped by subject: no subject's frames on both sides")
    write_split(split(audit / "manifest.csv", folds=FOLDS, seed=s.seed), folds)
    done("split")

    recipe = load_recipe(RECIPE)
    overrides = {"encoder": s.encoder, "encoder_weights": "none", "size": _size(s.train_size),
                 "epochs": s.epochs, "device": s.device, "seed": s.seed}
    runs, fold_val_dice = [], []
    for k in range(FOLDS):
        run = out / "runs" / f"fold{k}"
        runs.append(run)
        step(f"train fold {k}",
             shell("nerveseg", "train", folds, "--fold", k, "--recipe", RECIPE, "--encoder",
                   s.encoder, "--encoder-weights", "none", "--size", _size(s.train_size),
                   "--epochs", s.epochs, "--device", s.device, "--seed", s.seed, "--out", run),
             f"{RECIPE} scaled down for a CPU demo: {RECIPE} uses ImageNet weights (a download "
             f"this offline demo cannot make) and resnet34 at 608x448 for 40 epochs; here "
             f"{s.encoder} from scratch at {_size(s.train_size)} for {s.epochs} epochs"
             if k == 0 else "")
        values = merge_recipe(TrainOptions(manifest=str(folds), fold=str(k)).to_dict(), recipe,
                              set(overrides))
        values.update(overrides)
        result = train(TrainOptions.from_dict(values), run, inference=recipe.inference(),
                       on_epoch_end=(lambda record, k=k: on_epoch(k, record))
                       if on_epoch else None)
        fold_val_dice.append(result.best_dice)
        done(f"train fold {k}")

    oof = out / "oof" / "probs"
    step("predict out-of-fold",
         shell("nerveseg", "predict", *runs, folds, "--out-of-fold", "--tta", "flips",
               "--device", s.device, "--out", oof),
         "each training image by the fold model that never saw it; the recipe adds presence "
         "gating")
    predict(runs, folds, oof, tta="flips", out_of_fold=True, device=s.device)
    done("predict out-of-fold")

    test_maps = []
    for k, run in enumerate(runs):
        test_maps.append(out / "test" / f"fold{k}")
        step(f"predict test fold {k}",
             shell("nerveseg", "predict", run, data / "test", "--tta", "flips", "--device",
                   s.device, "--out", test_maps[-1]))
        predict([run], data / "test", test_maps[-1], tta="flips", device=s.device)
        done(f"predict test fold {k}")

    test_ensemble = out / "test" / "ensemble"
    step("ensemble", shell("nerveseg", "ensemble", *test_maps, "--method", "asme", "--out",
                           test_ensemble),
         "ASME: per image, each fold weighted by its agreement with the others")
    ensemble(test_maps, test_ensemble, method="asme")
    done("ensemble")

    oof_crf, test_crf = out / "oof" / "crf", out / "test" / "crf"
    step("crf out-of-fold", shell("nerveseg", "crf", oof, folds, "--out", oof_crf),
         "the CRF on the out-of-fold maps too, to score whether it helps")
    crf(oof, folds, oof_crf)
    done("crf out-of-fold")
    step("crf test", shell("nerveseg", "crf", test_ensemble, data / "test", "--out", test_crf))
    crf(test_ensemble, data / "test", test_crf)
    done("crf test")

    scores_dir = out / "score"
    empty_dir = scores_dir / "all-empty"
    step("score all-empty", shell("nerveseg", "score", oof, folds, "--threshold", 1, "--out",
                                  empty_dir),
         "the all-empty submission to beat: at threshold 1 no pixel is foreground")
    empty = score(oof, folds, threshold=1.0)
    write_outputs(empty, empty_dir)
    lines = [ScoreLine("all empty", oof, None, None, float(empty.summary["dice"]))]
    done("score all-empty")

    reports: dict[str, tuple[Path, ScoreReport]] = {}
    for name, maps, label, note in (
            ("oof", oof, "out-of-fold", "choose threshold and min area on out-of-fold maps"),
            ("oof-crf", oof_crf, "out-of-fold + CRF", "")):
        target = scores_dir / name
        post_path = target / "postprocess.json"
        step(f"score {name}",
             shell("nerveseg", "score", maps, folds, "--sweep-threshold", SWEEP_THRESHOLDS,
                   "--sweep-min-area", s.min_area_sweep, "--out", target), note)
        report = score(maps, folds, sweep_thresholds=SWEEP_THRESHOLDS,
                       sweep_min_areas=s.min_area_sweep)
        write_outputs(report, target)
        write_postprocess(report.sweep, post_path, str(maps), overwrite=False)
        threshold, min_area, best = report.sweep.best
        lines.append(ScoreLine(label, maps, threshold, min_area, best, post_path))
        reports[label] = (maps, report)
        done(f"score {name}")

    # The CRF is kept only when it helps out of fold (ties: without, the simpler chain).
    chosen = max(lines[1:], key=lambda line: (line.dice, line is lines[1]))
    test_chosen = test_crf if chosen.predictions == oof_crf else test_ensemble
    submission = out / "submission.csv"
    step("rle-encode",
         shell("nerveseg", "rle-encode", test_chosen, "--postprocess", chosen.postprocess,
               "--ids-from", data / "sample_submission.csv", "--out", submission),
         f"the submission from the test maps of the better out-of-fold variant ({chosen.name})")
    encoded = encode_folder(test_chosen, submission, postprocess=chosen.postprocess,
                            ids_from=data / "sample_submission.csv")
    done("rle-encode")
    chosen_report = score(chosen.predictions, folds, postprocess=chosen.postprocess)
    seconds["total"] = time.perf_counter() - started

    result = DemoResult(out, settings, lines, chosen, chosen_report, submission, encoded,
                        fold_val_dice, seconds)
    atomic_write_text(out / MARKER, json.dumps({
        "command": "demo", "complete": True, "settings": asdict(settings),
        "scores": [{"name": line.name, "predictions": str(line.predictions),
                    "threshold": line.threshold, "min_area": line.min_area,
                    "dice": line.dice} for line in lines],
        "chosen": chosen.name, "beats_empty": result.beats_empty,
        "submission": str(submission), "fold_val_dice": fold_val_dice,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }, indent=2) + "\n")
    return result


def parse_settings(size: str = "580x420", train_size: str = "128x96", **kwargs: int | str
                   ) -> DemoSettings:
    """DemoSettings from the command line's text sizes (``WxH``) and its other options."""
    return DemoSettings(size=parse_size(size), train_size=parse_size(train_size),
                        **kwargs).validate()  # type: ignore[arg-type]
