"""``nerveseg split``: grouped, stratified folds that never leak; determinism; ``--check``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nerveseg_cli.data.dedupe import dedupe, write_outputs
from nerveseg_cli.data.split import (
    LEFT_OUT,
    balance_folds,
    deal_units,
    find_leaks,
    refine_folds,
    split,
    unit_of_images,
)
from nerveseg_cli.io.datasets import Sample, discover_images, read_manifest, write_manifest
from nerveseg_cli.io.images import read_mask
from tests._helpers_audit import assert_bad_input, make_synth, nerveseg, read_rows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 subjects x 8 frames of 64x48 (each subject has nerve and empty frames)."""
    root = tmp_path_factory.mktemp("split") / "data"
    make_synth(root, subjects=6, per_subject=8, seed=5)
    return root


@pytest.fixture(scope="module")
def deduped(synth_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dedupe's manifest (policy report, so every image stays) with a duplicate group that
    spans subjects 1 and 2: 2_90 is an exact copy of 1_1."""
    train = tmp_path_factory.mktemp("with-cross") / "train"
    shutil.copytree(synth_set / "train", train)
    shutil.copy(train / "1_1.tif", train / "2_90.tif")
    shutil.copy(train / "1_1_mask.tif", train / "2_90_mask.tif")
    out = train.parent / "deduped"
    write_outputs(dedupe(train, policy="report"), out)
    return out / "manifest.csv"


def folds_by(rows: list[dict[str, str]], key: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in rows:
        if row[key] != "" and row["fold"] != "-1":
            found.setdefault(row[key], set()).add(row["fold"])
    return found


# --------------------------------------------------------------------------------------------
# no leakage, stratification, determinism


@pytest.mark.filterwarnings("ignore:--group none")
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n_folds=st.integers(2, 5),
       group=st.sampled_from(["subject", "none"]))
def test_no_leakage_for_any_seed(deduped: Path, seed: int, n_folds: int, group: str) -> None:
    result = split(deduped, folds=n_folds, group=group, seed=seed, workers=1)
    folds = result.folds
    assert folds.shape == (len(result.table.samples),)
    assert set(folds.tolist()) == set(range(n_folds))  # every fold used, none left out
    dup_groups = result.table.columns["dup_group"]
    assert find_leaks(folds, dup_groups, "dup_group") == []
    assert any(g != "" for g in dup_groups)
    if group == "subject":
        assert find_leaks(folds, result.table.subjects, "subject") == []
        cross = [i for i, s in enumerate(result.table.samples) if s.id in ("1_1", "2_90")]
        assert folds[cross[0]] == folds[cross[1]]
        # the copy joins subjects 1 and 2, so both subjects share one fold
        subjects = np.array(result.table.subjects)
        assert len(set(folds[np.isin(subjects, ["1", "2"])].tolist())) == 1
    again = split(deduped, folds=n_folds, group=group, seed=seed, workers=1)
    np.testing.assert_array_equal(again.folds, folds)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_folds=st.integers(2, 6))
def test_dealing_keeps_units_whole_and_strata_even(seed: int, n_folds: int) -> None:
    rng = np.random.default_rng(seed)
    n_units = int(rng.integers(30, 60))
    sizes = rng.integers(5, 16, n_units)
    positives = rng.binomial(sizes, rng.uniform(0.1, 0.9, n_units))
    subjects = np.repeat(np.arange(n_units), sizes).astype(str)
    has_mask = np.concatenate([np.r_[np.ones(p), np.zeros(s - p)]
                               for p, s in zip(positives, sizes, strict=True)]).astype(np.int64)
    units = unit_of_images(subjects.tolist(), None, "subject")
    assert np.array_equal(units, subjects.astype(int))  # numbered by first appearance
    counts = np.stack([positives, sizes - positives, np.zeros(n_units, int)], axis=1)
    targets = np.full((n_folds, 1), 1 / n_folds) * counts.sum(axis=0)
    fold_of_unit = refine_folds(counts, targets,
                                deal_units(counts, targets, np.random.default_rng(seed)))
    folds = fold_of_unit[units]
    assert find_leaks(folds, subjects.tolist(), "subject") == []
    overall = has_mask.mean()
    for fold in range(n_folds):
        members = folds == fold
        assert members.any()
        assert abs(has_mask[members].mean() - overall) < 0.05
        assert abs(members.sum() / len(folds) - 1 / n_folds) < 0.2 / n_folds


def test_same_input_and_seed_give_the_same_bytes(synth_set: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    for out in (first, second):
        result = nerveseg("split", synth_set / "train", "--out", out, "--folds", "3",
                          "--seed", "11")
        assert result.exit_code == 0, result.stderr
    assert first.read_bytes() == second.read_bytes()
    # a fresh interpreter with another string-hash seed writes the same bytes
    third = tmp_path / "c.csv"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-m", "nerveseg_cli", "split", str(synth_set / "train"),
                    "--out", str(third), "--folds", "3", "--seed", "11"],
                   check=True, env=env, cwd=REPO, capture_output=True)
    assert third.read_bytes() == first.read_bytes()
    other = [split(synth_set / "train", folds=3, seed=s).folds for s in range(1, 6)]
    assert any(not np.array_equal(o, split(synth_set / "train", folds=3, seed=11).folds)
               for o in other)


def test_folds_table_and_manifest(synth_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.csv"
    result = nerveseg("split", synth_set / "train", "--out", out, "--folds", "3")
    assert result.exit_code == 0, result.stderr
    for header in ("fold", "images", "subjects", "positive %", "mean mask area"):
        assert header in result.stdout
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "image", "mask", "subject", "has_mask", "fold"]
    assert len(rows) == 48 and {r["fold"] for r in rows} == {"0", "1", "2"}
    assert all(len(folds) == 1 for folds in folds_by(rows, "subject").values())
    assert {r["has_mask"] for r in rows} == {"0", "1"}
    listed = json.loads(nerveseg("split", synth_set / "train", "--out", tmp_path / "j.csv",
                                 "--folds", "3", "--json").stdout)
    assert [row["fold"] for row in listed["per_fold"]] == [0, 1, 2]
    assert sum(row["images"] for row in listed["per_fold"]) == 48


def test_holdout_puts_validation_in_fold_zero(synth_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "holdout.csv"
    result = nerveseg("split", synth_set / "train", "--out", out, "--holdout", "0.35")
    assert result.exit_code == 0, result.stderr
    rows = read_rows(out)
    assert {r["fold"] for r in rows} == {"0", "1"}
    assert sum(r["fold"] == "0" for r in rows) == 16  # 2 of 6 subjects: closest to 35%
    assert all(len(folds) == 1 for folds in folds_by(rows, "subject").values())


def test_group_none_warns_splits_by_image_but_keeps_duplicates(deduped: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "by-image.csv"
    result = nerveseg("split", deduped, "--out", out, "--group", "none", "--folds", "4")
    assert result.exit_code == 0, result.stderr
    assert "warning: --group none" in result.stderr
    rows = read_rows(out)
    assert any(len(folds) > 1 for folds in folds_by(rows, "subject").values())
    assert all(len(folds) == 1 for folds in folds_by(rows, "dup_group").values())
    assert nerveseg("split", "--check", out).exit_code == 1  # subjects leak, as warned


@pytest.mark.parametrize("ratio,share", [("1:1", (1, 1)), ("1:2", (1, 2)), ("3:1", (3, 1))])
def test_balance_leaves_out_surplus_with_fold_minus_one(synth_set: Path, tmp_path: Path,
                                                        ratio: str, share: tuple) -> None:
    plain, balanced = tmp_path / "plain.csv", tmp_path / "balanced.csv"
    for out, extra in ((plain, []), (balanced, ["--balance", ratio])):
        result = nerveseg("split", synth_set / "train", "--out", out, "--folds", "3", *extra)
        assert result.exit_code == 0, result.stderr
    before, after = read_rows(plain), read_rows(balanced)
    assert len(after) == len(before) == 48  # nothing silently lost
    for old, new in zip(before, after, strict=True):  # balancing only ever leaves rows out
        assert new["fold"] in (old["fold"], "-1") and new["id"] == old["id"]
    for fold in ("0", "1", "2"):
        count = {flag: sum(r["fold"] == fold and r["has_mask"] == flag for r in before)
                 for flag in "10"}
        scale = min(count["1"] / share[0], count["0"] / share[1])
        expected = {"1": int(scale * share[0] + 1e-9), "0": int(scale * share[1] + 1e-9)}
        kept = {flag: sum(r["fold"] == fold and r["has_mask"] == flag for r in after)
                for flag in "10"}
        assert kept == expected and kept["1"] > 0 and kept["0"] > 0
    if any(r["fold"] == "-1" for r in after):
        assert "left out" in result.stdout
    assert nerveseg("split", "--check", balanced).exit_code == 0  # left-out rows are no leak


def test_balance_function_is_seeded_and_exact() -> None:
    folds = np.array([0] * 10 + [1] * 10)
    has_mask = np.array([1] * 3 + [0] * 7 + [1] * 6 + [0] * 4)
    first = balance_folds(folds, has_mask, (1, 1), np.random.default_rng(0))
    again = balance_folds(folds, has_mask, (1, 1), np.random.default_rng(0))
    np.testing.assert_array_equal(first, again)
    for fold in (0, 1):
        kept = first == fold
        assert has_mask[kept].sum() == (1 - has_mask[kept]).sum() == [3, 4][fold]
    assert (first == LEFT_OUT).sum() == 20 - 14


def test_dedupe_manifest_chains_into_split(deduped: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "split.csv"
    result = nerveseg("split", deduped, "--out", out, "--folds", "3")
    assert result.exit_code == 0, result.stderr
    rows = read_rows(out)
    assert list(rows[0])[-3:] == ["dup_group", "action", "fold"]
    original = {s.id: s for s in read_manifest(deduped)}
    for sample in read_manifest(out):
        assert sample.image.resolve() == original[sample.id].image.resolve()
        assert sample.mask.resolve() == original[sample.id].mask.resolve()
    check = nerveseg("split", "--check", out)
    assert check.exit_code == 0, check.stdout
    assert "no leakage" in check.stdout


# --------------------------------------------------------------------------------------------
# --check


def test_check_catches_a_leaky_subject(synth_set: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    assert nerveseg("split", synth_set / "train", "--out", good, "--folds", "3").exit_code == 0
    rows = good.read_text().splitlines()
    header, body = rows[0], rows[1:]
    victim = next(i for i, line in enumerate(body) if line.startswith("4_2,"))
    fold = body[victim].rsplit(",", 1)[1]
    body[victim] = body[victim].rsplit(",", 1)[0] + "," + str((int(fold) + 1) % 3)
    leaky = tmp_path / "leaky.csv"
    leaky.write_text("\n".join([header, *body]) + "\n")
    result = nerveseg("split", "--check", leaky)
    assert result.exit_code == 1
    assert "subject" in result.stdout and " 4 " in result.stdout
    report = json.loads(nerveseg("split", "--check", leaky, "--json").stdout)
    assert report["leaky"] is True
    assert report["leaks"] == [{"kind": "subject", "name": "4",
                                "folds": sorted([int(fold), (int(fold) + 1) % 3]),
                                "images": 8}]


def test_check_catches_a_leaky_duplicate_group(synth_set: Path, tmp_path: Path) -> None:
    samples = [Sample(s.id, s.image, s.mask, s.id) for s in
               discover_images(synth_set / "train")[:6]]  # every image its own subject
    manifest = tmp_path / "mine.csv"
    write_manifest(manifest, samples, {"dup_group": ["", "7", "", "", "7", ""],
                                       "fold": ["0", "0", "1", "1", "1", "-1"]})
    report = json.loads(nerveseg("split", "--check", manifest, "--json").stdout)
    assert report["leaks"] == [{"kind": "dup_group", "name": "7", "folds": [0, 1],
                                "images": 2}]
    assert nerveseg("split", "--check", manifest).exit_code == 1


def test_check_ignores_left_out_rows(synth_set: Path, tmp_path: Path) -> None:
    samples = discover_images(synth_set / "train")[:8]  # all subject 1
    manifest = tmp_path / "mine.csv"
    write_manifest(manifest, samples, {"fold": ["2"] * 7 + ["-1"]})
    result = nerveseg("split", "--check", manifest)
    assert result.exit_code == 0 and "no leakage" in result.stdout
    assert "left out" in result.stdout


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


def test_empty_image_set(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "s.csv"
    assert_bad_input(nerveseg("split", tmp_path / "empty", "--out", out), "no images")
    assert not out.exists()


def test_more_folds_than_subjects(synth_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    assert_bad_input(nerveseg("split", synth_set / "train", "--out", out, "--folds", "7"),
                     "7 folds", "only 6 subjects")
    assert not out.exists()


def test_balance_that_leaves_a_fold_empty(synth_set: Path, tmp_path: Path) -> None:
    # subject 1's empty frames and subject 2's nerve frames: two folds, one class each
    chosen = [s for s in discover_images(synth_set / "train")
              if (s.subject == "1" and not read_mask(s.mask).any())
              or (s.subject == "2" and read_mask(s.mask).any())]
    manifest = tmp_path / "two.csv"
    write_manifest(manifest, chosen)
    out = tmp_path / "s.csv"
    assert_bad_input(nerveseg("split", manifest, "--out", out, "--folds", "2",
                              "--balance", "1:1"), "--balance 1:1", "empty")
    assert not out.exists()
    assert_bad_input(nerveseg("split", synth_set / "train", "--out", out, "--folds", "2",
                              "--balance", "1:50"), "--balance 1:50", "without positives")
    assert not out.exists()


def test_manifest_missing_required_columns(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,subject\n1_1,a.tif,1\n")
    out = tmp_path / "s.csv"
    assert_bad_input(nerveseg("split", manifest, "--out", out), "lacks column", "mask")
    assert not out.exists()
    assert_bad_input(nerveseg("split", "--check", manifest), "lacks column")


def test_check_needs_a_fold_column_of_integers(synth_set: Path, tmp_path: Path) -> None:
    samples = discover_images(synth_set / "train")[:2]
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, samples)
    assert_bad_input(nerveseg("split", "--check", manifest), "lacks column fold")
    write_manifest(manifest, samples, {"fold": ["0", "one"]})
    assert_bad_input(nerveseg("split", "--check", manifest), "1_2", "'one'")


@pytest.mark.parametrize("missing", ["image", "mask"])
def test_manifest_pointing_at_missing_files(synth_set: Path, tmp_path: Path,
                                            missing: str) -> None:
    samples = discover_images(synth_set / "train")[:4]
    gone = tmp_path / "gone.tif"
    samples[2] = Sample(samples[2].id, gone if missing == "image" else samples[2].image,
                        gone if missing == "mask" else samples[2].mask, samples[2].subject)
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, samples)
    out = tmp_path / "s.csv"
    assert_bad_input(nerveseg("split", manifest, "--out", out), f"{missing} of 1_3",
                     "not found", "gone.tif")
    assert not out.exists()


def test_option_mistakes(synth_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    train = synth_set / "train"
    assert_bad_input(nerveseg("split", train), "--out is required")
    assert_bad_input(nerveseg("split", train, "--out", out, "--folds", "3", "--holdout", "0.2"),
                     "not both")
    assert_bad_input(nerveseg("split", train, "--out", out, "--balance", "half"),
                     "--balance 'half'", "P:N")
    assert_bad_input(nerveseg("split", synth_set / "test", "--out", out, "--folds", "2",
                              "--balance", "1:1"), "--balance needs every image labelled")
    assert_bad_input(nerveseg("split", "--check", train, "--out", out), "--check")
    assert not out.exists()
    out.write_text("mine")
    assert_bad_input(nerveseg("split", train, "--out", out), "exists")
    assert out.read_text() == "mine"
