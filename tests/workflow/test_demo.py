"""``nerveseg demo``: the whole pipeline at tiny settings, run once for the module.

Smaller images than the default (290x210, trained at 64x64), 4 test images and 5 epochs take
about 45 s with one torch thread on 2 cores, and the models still learn enough to beat the
all-empty submission out of fold (0.81 against 0.48; the defaults: 0.79 against 0.42)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nerveseg_cli.io.images import read_image
from nerveseg_cli.workflow.demo import MARKER, clear_previous_demo
from tests.conftest import CliResult, run_cli

TINY = ("--size", "290x210", "--train-size", "64x64", "--test", "4", "--epochs", "5")
STEPS = ("nerveseg synth", "nerveseg dedupe", "nerveseg split", "nerveseg train",
         "nerveseg predict", "--out-of-fold", "nerveseg ensemble", "--method asme",
         "nerveseg crf", "nerveseg score", "--sweep-threshold", "nerveseg rle-encode",
         "--ids-from")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CliResult, dict]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = run_cli("demo", out, *TINY)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out, result, json.loads((out / MARKER).read_text())


def test_prints_every_step_in_order_and_the_verdict(demo: tuple[Path, CliResult, dict]) -> None:
    out, result, record = demo
    positions = [result.stderr.find(step) for step in STEPS]
    assert -1 not in positions, [s for s, p in zip(STEPS, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    assert "--encoder-weights none" in result.stderr  # nerve-default scaled down, and said so
    assert "scaled down" in result.stderr
    assert "all empty" in result.stdout and "out-of-fold + CRF" in result.stdout
    assert "beat the all-empty submission" in result.stdout
    assert f"submission: {out}/submission.csv" in result.stdout
    assert record["complete"] and record["beats_empty"]


def test_scores_come_from_the_files_and_beat_all_empty(demo: tuple[Path, CliResult, dict]) -> None:
    """Every figure of the table can be recomputed from what the demo left in OUT."""
    from nerveseg_cli.evaluation.score import score

    out, _, record = demo
    folds = out / "folds.csv"
    table = pd.read_csv(folds, dtype={"id": str})
    gt_empty = np.mean([read_image(out / m).max() == 0 for m in table["mask"]])
    empty, *trained = record["scores"]
    assert empty["dice"] == pytest.approx(gt_empty)  # empty prediction: 1 on empty images only
    for line, folder in zip(trained, ("oof/probs", "oof/crf"), strict=True):
        again = score(out / folder, folds, threshold=line["threshold"],
                      min_area=line["min_area"])
        assert again.summary["dice"] == pytest.approx(line["dice"])
    best = max(line["dice"] for line in trained)
    assert best > empty["dice"]
    runs_val = [pd.read_csv(out / "runs" / f"fold{k}" / "metrics.csv") for k in (0, 1)]
    for metrics in runs_val:  # real training: the loss fell
        assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]


def test_every_intermediate_file_is_left_in_out(demo: tuple[Path, CliResult, dict]) -> None:
    out, _, _ = demo
    ids = pd.read_csv(out / "folds.csv", dtype={"id": str})["id"]
    for path in ("data/train", "data/sample_submission.csv", "dedupe/manifest.csv",
                 "dedupe/duplicates.csv", "runs/fold0/config.json", "runs/fold1/metrics.csv",
                 "oof/probs/prediction.json", "test/ensemble/weights.csv",
                 "test/crf/prediction.json", "score/all-empty/summary.json",
                 "score/oof/postprocess.json", "score/oof-crf/sweep.csv", "submission.csv"):
        assert (out / path).exists(), path
    for folder in ("oof/probs", "oof/crf"):
        assert sorted(p.stem for p in (out / folder).glob("*.png")) == sorted(ids)
    for folder in ("test/fold0", "test/fold1", "test/ensemble", "test/crf"):
        assert len(list((out / folder).glob("*.png"))) == 4
    config = json.loads((out / "runs" / "fold0" / "config.json").read_text())
    assert config["training"]["recipe"] == "nerve-default"
    assert config["training"]["encoder_weights"] == "none"


def test_the_printed_commands_redo_the_steps(demo: tuple[Path, CliResult, dict],
                                          tmp_path: Path) -> None:
    """Copying the printed rle-encode and score lines gives the demo's own files."""
    out, result, _ = demo
    lines = [line for line in result.stderr.splitlines() if line.startswith("nerveseg ")]
    encode = shlex.split(next(line for line in lines if line.startswith("nerveseg rle-encode")))
    mine = tmp_path / "submission.csv"
    encode[encode.index("--out") + 1] = str(mine)
    assert run_cli(*encode[1:]).exit_code == 0
    assert mine.read_bytes() == (out / "submission.csv").read_bytes()
    sweep = shlex.split(next(line for line in lines if "--sweep-threshold" in line))
    sweep[sweep.index("--out") + 1] = str(tmp_path / "score")
    assert run_cli(*sweep[1:]).exit_code == 0
    folder = Path(sweep[2]).parent.name + ("-crf" if sweep[2].endswith("crf") else "")
    assert json.loads((tmp_path / "score" / "postprocess.json").read_text())["threshold"] == \
        json.loads((out / "score" / folder / "postprocess.json").read_text())["threshold"]


def test_overwrite_clears_only_what_a_demo_wrote(tmp_path: Path) -> None:
    marked = tmp_path / "marked"
    for name in ("data/train", "runs/fold0", "oof", "keep"):
        (marked / name).mkdir(parents=True)
    (marked / MARKER).write_text("{}")
    (marked / "submission.csv").write_text("img,pixels\n")
    (marked / "notes.txt").write_text("mine")
    clear_previous_demo(marked)
    assert sorted(p.name for p in marked.iterdir()) == ["keep", "notes.txt"]


def test_overwrite_never_replaces_what_no_demo_wrote(tmp_path: Path) -> None:
    """--overwrite in a folder without demo.json: refused when it holds one of the demo's
    names (the user's data/ stays), before any work."""
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "x.tif").write_bytes(b"mine")
    result = run_cli("demo", mine, "--overwrite")
    assert result.exit_code == 2 and "was not made by nerveseg demo" in result.stderr
    assert sorted(p.name for p in mine.rglob("*")) == ["data", "x.tif"]
