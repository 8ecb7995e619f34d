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

import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nerveseg_cli.data.dedupe import dedupe
from nerveseg_cli.data.dedupe import write_outputs as write_dedupe_outputs
from nerveseg_cli.data.split import split, write_split
from nerveseg_cli.data.synth import synth
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.evaluation.score import ScoreOutputs, ScoreReport, score, write_score_outputs
from nerveseg_cli.inference.crf import crf
from nerveseg_cli.inference.ensemble import ensemble
from nerveseg_cli.inference.merging import MergeRule
from nerveseg_cli.inference.predict import PredictOptions, predict
from nerveseg_cli.io.images import parse_size
from nerveseg_cli.io.outputs import atomic_write_text, check_output_dir, prepare_output_dir
from nerveseg_cli.records import json_text
from nerveseg_cli.submission.codec import EncodeResult, encode_folder

if TYPE_CHECKING:
    from nerveseg_cli.train.progress import Reporter

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

    def record(self) -> dict[str, Any]:
        """The complete demo.json (beside ``"command": "demo"``)."""
        return {
            "complete": True, "settings": asdict(self.settings),
            "scores": [{"name": line.name, "predictions": str(line.predictions),
                        "threshold": line.threshold, "min_area": line.min_area,
                        "dice": line.dice} for line in self.scores],
            "chosen": self.chosen.name, "beats_empty": self.beats_empty,
            "submission": str(self.submission), "fold_val_dice": self.fold_val_dice,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


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


class _Demo:
    """One demo run in ``out``: each method is one or a few pipeline steps, each step
    announced to ``on_step`` as its shell command and timed in ``seconds``."""

    def __init__(self, out: Path, settings: DemoSettings, on_step: Callable[[DemoStep], None],
                 fold_reporter: Callable[[int], Reporter] | None) -> None:
        self.out, self.settings, self.on_step = out, settings, on_step
        self.fold_reporter = fold_reporter
        self.seconds: dict[str, float] = {}
        self.data, self.audit, self.folds = out / "data", out / "dedupe", out / "folds.csv"
        self.runs = [out / "runs" / f"fold{k}" for k in range(FOLDS)]
        self.oof, self.oof_crf = out / "oof" / "probs", out / "oof" / "crf"
        self.test_maps = [out / "test" / f"fold{k}" for k in range(FOLDS)]
        self.test_ensemble, self.test_crf = out / "test" / "ensemble", out / "test" / "crf"

    @contextmanager
    def step(self, name: str, *words: object, note: str = "") -> Iterator[None]:
        """Announce a step (as the command that does it) and time it."""
        self.on_step(DemoStep(shell("nerveseg", *words), note))
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started

    def make_data(self) -> None:
        s = self.settings
        with self.step("synth", "synth", self.data, "--subjects", s.subjects, "--per-subject",
                       s.per_subject, "--test", s.test, "--size", _size(s.size), "--seed",
                       s.seed, note="a fresh Kaggle-layout dataset: train/ (images + masks), "
                       "test/, sample_submission.csv"):
            synth(self.data, subjects=s.subjects, per_subject=s.per_subject, test=s.test,
                  size=s.size, seed=s.seed)
        with self.step("dedupe", "dedupe", self.data / "train", "--out", self.audit,
                       note="drop the duplicate frames whose masks disagree (synth plants "
                       "some)"):
            write_dedupe_outputs(dedupe(self.data / "train"), self.audit)
        with self.step("split", "split", self.audit / "manifest.csv", "--folds", FOLDS,
                       "--seed", s.seed, "--out", self.folds,
                       note="folds grouped by subject: no subject's frames on both sides"):
            write_split(split(self.audit / "manifest.csv", folds=FOLDS, seed=s.seed),
                        self.folds)

    def train_folds(self) -> list[float]:
        """One run per fold, from the recipe scaled down to a CPU; each run's best Dice."""
        from nerveseg_cli.train.engine import train
        from nerveseg_cli.train.resolution import resolve_train_options

        s = self.settings
        overrides = {"encoder": s.encoder, "encoder_weights": "none",
                     "size": _size(s.train_size), "epochs": s.epochs, "device": s.device,
                     "seed": s.seed}
        flags = [f"--{key.replace('_', '-')}" for key in overrides]
        note = (f"{RECIPE} scaled down for a CPU demo: {RECIPE} uses ImageNet weights (a "
                f"download this offline demo cannot make) and resnet34 at 608x448 for 40 "
                f"epochs; here {s.encoder} from scratch at {_size(s.train_size)} for "
                f"{s.epochs} epochs")
        best = []
        for k, run in enumerate(self.runs):
            given = {"manifest": str(self.folds), "fold": str(k), **overrides}
            words = [w for flag, value in zip(flags, overrides.values(), strict=True)
                     for w in (flag, value)]
            with self.step(f"train fold {k}", "train", self.folds, "--fold", k, "--recipe",
                           RECIPE, *words, "--out", run, note=note if k == 0 else ""):
                resolved = resolve_train_options(given, set(given), recipe=RECIPE)
                reporter = self.fold_reporter(k) if self.fold_reporter else None
                result = train(resolved.options, run, inference=resolved.inference,
                               reporter=reporter)
            best.append(result.best_dice)
        return best

    def predict_all(self) -> None:
        device = self.settings.device
        with self.step("predict out-of-fold", "predict", *self.runs, self.folds,
                       "--out-of-fold", "--tta", "flips", "--device", device, "--out",
                       self.oof, note="each training image by the fold model that never saw "
                       "it; the recipe adds presence gating"):
            predict(self.runs, self.folds, self.oof,
                    PredictOptions(tta="flips", device=device, out_of_fold=True))
        for k, (run, maps) in enumerate(zip(self.runs, self.test_maps, strict=True)):
            with self.step(f"predict test fold {k}", "predict", run, self.data / "test",
                           "--tta", "flips", "--device", device, "--out", maps):
                predict([run], self.data / "test", maps, PredictOptions(tta="flips",
                                                                          device=device))
        with self.step("ensemble", "ensemble", *self.test_maps, "--method", "asme", "--out",
                       self.test_ensemble, note="ASME: per image, each fold weighted by its "
                       "agreement with the others"):
            ensemble(self.test_maps, self.test_ensemble, MergeRule("asme"))
        with self.step("crf out-of-fold", "crf", self.oof, self.folds, "--out", self.oof_crf,
                       note="the CRF on the out-of-fold maps too, to score whether it helps"):
            crf(self.oof, self.folds, self.oof_crf)
        with self.step("crf test", "crf", self.test_ensemble, self.data / "test", "--out",
                       self.test_crf):
            crf(self.test_ensemble, self.data / "test", self.test_crf)

    def score_all(self) -> list[ScoreLine]:
        """The all-empty submission, then the out-of-fold maps without and with the CRF, each
        at the post-processing its sweep chose."""
        empty_dir = self.out / "score" / "all-empty"
        with self.step("score all-empty", "score", self.oof, self.folds, "--threshold", 1,
                       "--out", empty_dir, note="the all-empty submission to beat: at "
                       "threshold 1 no pixel is foreground"):
            empty = score(self.oof, self.folds, threshold=1.0)
            write_score_outputs(empty, ScoreOutputs(out=empty_dir))
        lines = [ScoreLine("all empty", self.oof, None, None, float(empty.summary["dice"]))]
        for name, maps, label, note in (
                ("oof", self.oof, "out-of-fold",
                 "choose threshold and min area on out-of-fold maps"),
                ("oof-crf", self.oof_crf, "out-of-fold + CRF", "")):
            lines.append(self._sweep(name, maps, label, note))
        return lines

    def _sweep(self, name: str, maps: Path, label: str, note: str) -> ScoreLine:
        target = self.out / "score" / name
        post_path = target / "postprocess.json"
        sweep_areas = self.settings.min_area_sweep
        with self.step(f"score {name}", "score", maps, self.folds, "--sweep-threshold",
                       SWEEP_THRESHOLDS, "--sweep-min-area", sweep_areas, "--out", target,
                       note=note):
            report = score(maps, self.folds, sweep_thresholds=SWEEP_THRESHOLDS,
                           sweep_min_areas=sweep_areas)
            write_score_outputs(report, ScoreOutputs(out=target, postprocess=post_path))
        threshold, min_area, best = report.sweep.best
        return ScoreLine(label, maps, threshold, min_area, best, post_path)

    def submit(self, chosen: ScoreLine) -> EncodeResult:
        test_chosen = self.test_crf if chosen.predictions == self.oof_crf else \
            self.test_ensemble
        sample = self.data / "sample_submission.csv"
        submission = self.out / "submission.csv"
        with self.step("rle-encode", "rle-encode", test_chosen, "--postprocess",
                       chosen.postprocess, "--ids-from", sample, "--out", submission,
                       note="the submission from the test maps of the better out-of-fold "
                       f"variant ({chosen.name})"):
            return encode_folder(test_chosen, submission, postprocess=chosen.postprocess,
                                 ids_from=sample)


def run_demo(out: str | Path = "nerveseg-demo", settings: DemoSettings = DemoSettings(), *,
             overwrite: bool = False, on_step: Callable[[DemoStep], None] = lambda step: None,
             fold_reporter: Callable[[int], Reporter] | None = None) -> DemoResult:
    """Run the pipeline in ``out``; ``on_step`` receives each step before it runs,
    ``fold_reporter(k)`` gives the progress reporter of fold k's training. Raises
    NervesegError on bad settings."""
    settings.validate()
    out = check_output_dir(out, overwrite)  # links out of it included, before clearing it
    if overwrite and out.is_dir():
        clear_previous_demo(out)
    out = prepare_output_dir(out, overwrite)
    write_marker(out, {"complete": False, "settings": asdict(settings)})
    started = time.perf_counter()
    demo = _Demo(out, settings, on_step, fold_reporter)
    demo.make_data()
    fold_val_dice = demo.train_folds()
    demo.predict_all()
    lines = demo.score_all()
    # The CRF is kept only when it helps out of fold (ties: without, the simpler chain).
    chosen = max(lines[1:], key=lambda line: (line.dice, line is lines[1]))
    encoded = demo.submit(chosen)
    chosen_report = score(chosen.predictions, demo.folds, postprocess=chosen.postprocess)
    demo.seconds["total"] = time.perf_counter() - started
    result = DemoResult(out, settings, lines, chosen, chosen_report, out / "submission.csv",
                        encoded, fold_val_dice, demo.seconds)
    write_marker(out, result.record())
    return result


def write_marker(out: Path, record: dict[str, Any]) -> None:
    """demo.json: what the demo is and how far it got (``--overwrite`` trusts only folders
    that hold one)."""
    atomic_write_text(out / MARKER, json_text({"command": "demo", **record}))


def parse_settings(size: str = "580x420", train_size: str = "128x96", **kwargs: int | str
                   ) -> DemoSettings:
    """DemoSettings from the command line's text sizes (``WxH``) and its other options."""
    return DemoSettings(size=parse_size(size), train_size=parse_size(train_size),
                        **kwargs).validate()  # type: ignore[arg-type]
