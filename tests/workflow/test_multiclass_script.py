"""examples/multiclass.sh end to end with SMOKE=1 (synth --classes 3, tiny sizes, 1 epoch), as a
user would run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import shellcheck
from tests.workflow.test_kaggle_script import REPO, run_script

SCRIPT = REPO / "examples" / "multiclass.sh"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("multiclass") / "work"
    done = run_script(out, SCRIPT, SMOKE="1", CRF="1", DEVICE="cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_smoke_run_writes_a_long_form_submission_in_sample_order(smoke) -> None:
    out, done = smoke
    submission = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(out / "synth" / "sample_submission.csv", dtype=str,
                         keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert submission[["ImageId", "ClassId"]].values.tolist() == \
        sample[["ImageId", "ClassId"]].values.tolist()
    assert f"submission: {out}/submission.csv" in done.stderr


def test_smoke_run_leaves_every_step_behind(smoke) -> None:
    out, done = smoke
    folds = pd.read_csv(out / "folds.csv", dtype={"id": str})
    assert "% vessel" in done.stdout  # the fold table shows each class
    ids = sorted(folds["id"])
    for oof in (out / "oof" / "probs", out / "oof" / "crf"):
        for name in ("nerve", "vessel"):
            assert sorted(p.stem for p in (oof / name).glob("*.png")) == ids, (oof, name)
    post = (out / "score" / "postprocess.json").read_text()
    assert '"nerve"' in post and '"vessel"' in post
    classes = pd.read_csv(out / "score" / "classes.csv")
    assert classes["class"].tolist() == ["nerve", "vessel"]
    maps = sorted((out / "oof" / "label-maps").glob("*.png"))
    assert sorted(p.stem for p in maps) == ids
    for path in maps:
        image = Image.open(path)
        assert image.mode == "P" and int(np.asarray(image).max()) <= 2
    for name in ("nerve", "vessel"):
        assert len(list((out / "test" / "ensemble" / name).glob("*.png"))) == 4


def test_missing_data_is_one_clear_error(tmp_path: Path) -> None:
    done = run_script(tmp_path / "work", SCRIPT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: set DATA to a folder of images and label maps (e.g. ../shared/data/usgra-seg), "
        "or SMOKE=1 for a synthetic run"]
    done = run_script(tmp_path / "work2", SCRIPT, DATA=str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "nowhere is not a folder" in done.stderr


def test_shellcheck_clean() -> None:
    done = subprocess.run([shellcheck(), str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
