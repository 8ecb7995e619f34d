"""``nerveseg dedupe``: planted duplicates found, policies applied row by row, bad input refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerveseg_cli.cli import dedupe as dedupe_cli
from nerveseg_cli.data import dedupe as dedupe_module
from nerveseg_cli.data.dedupe import (
    POLICIES,
    Pairs,
    decide_actions,
    dedupe,
    duplicate_groups,
    image_signature,
    near_pairs,
    pair_mask_dice,
    pairs_within_classes,
)
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.datasets import Sample, discover_images, write_manifest
from nerveseg_cli.io.images import read_mask
from nerveseg_cli.io.outputs import write_image
from tests._helpers_audit import (
    assert_bad_input,
    make_synth,
    nerveseg,
    planted_pairs,
    read_rows,
    tree_digest,
)

DUPLICATE_COLUMNS = ["id_a", "id_b", "subject_a", "subject_b", "kind", "distance", "mask_dice",
                     "conflict", "group"]


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 subjects x 10 frames of 64x48, with 4 planted exact and 4 planted near pairs."""
    root = tmp_path_factory.mktemp("dedupe") / "data"
    make_synth(root)
    return root


def found_pairs(result) -> set[tuple[str, str, str]]:
    ids = [s.id for s in result.samples]
    return {(ids[a], ids[b], "exact" if exact else "near")
            for a, b, exact in zip(result.pairs.a, result.pairs.b, result.pairs.exact,
                                   strict=True)}


def planted_set(root: Path) -> set[tuple[str, str, str]]:
    return {tuple(sorted((a, b), key=lambda i: int(i.split("_")[1]))) + (kind,)
            for a, b, kind in planted_pairs(root)}


# --------------------------------------------------------------------------------------------
# finding duplicates


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_exactly_the_planted_pairs(tmp_path: Path, seed: int) -> None:
    train = make_synth(tmp_path / "data", seed=seed)
    result = dedupe(train, workers=2)
    assert found_pairs(result) == planted_set(tmp_path / "data")
    assert result.pairs.conflict.all()  # synth plants copies with the opposite mask
    assert np.all(result.pairs.distance[~result.pairs.exact] <= 0.005)
    assert np.all(result.pairs.distance[result.pairs.exact] == 0)


def test_near_threshold_zero_finds_exact_pairs_only(synth_set: Path) -> None:
    result = dedupe(synth_set / "train", near_threshold=0.0)
    assert found_pairs(result) == {p for p in planted_set(synth_set) if p[2] == "exact"}


def test_scope_all_finds_cross_subject_near_copies(synth_set: Path, tmp_path: Path) -> None:
    train = tmp_path / "train"
    shutil.copytree(synth_set / "train", train)
    # an exact copy and a faint-noise copy of subject 1's frames, filed under other subjects
    shutil.copy(train / "1_1.tif", train / "2_90.tif")
    shutil.copy(train / "1_1_mask.tif", train / "2_90_mask.tif")
    image = cv2.imread(str(train / "1_3.tif"), cv2.IMREAD_GRAYSCALE)
    noise = np.random.default_rng(0).integers(-1, 2, image.shape)
    write_image(train / "3_90.tif", np.clip(image + noise, 0, 255).astype(np.uint8))
    shutil.copy(train / "1_3_mask.tif", train / "3_90_mask.tif")

    by_subject = found_pairs(dedupe(train, scope="subject"))
    everywhere = found_pairs(dedupe(train, scope="all"))
    assert ("1_1", "2_90", "exact") in by_subject  # exact duplicates are found set-wide
    assert ("1_3", "3_90", "near") not in by_subject
    assert ("1_3", "3_90", "near") in everywhere
    assert everywhere - by_subject == {("1_3", "3_90", "near")}


def test_duplicates_csv_and_summary(synth_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = nerveseg("dedupe", synth_set / "train", "--out", out, "--policy", "report")
    assert result.exit_code == 0, result.stderr
    rows = read_rows(out / "duplicates.csv")
    assert list(rows[0]) == DUPLICATE_COLUMNS
    assert {(r["id_a"], r["id_b"], r["kind"]) for r in rows} == planted_set(synth_set)
    for row in rows:
        assert row["subject_a"] == row["id_a"].split("_")[0] == row["subject_b"]
        assert row["conflict"] == "1" and float(row["mask_dice"]) == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exact_pairs"] == summary["near_pairs"] == 4
    assert summary["conflicting_groups"] == 8 and summary["kept"] == 40
    assert "exact pairs" in result.stdout and "conflicting groups" in result.stdout


# --------------------------------------------------------------------------------------------
# policies


def expected_actions(root: Path, policy: str) -> dict[str, str]:
    """What each planted pair's members should get; every other image is kept as is."""
    expected = {}
    for a, b, kind in planted_pairs(root):
        empty, full = (a, b) if not read_mask(root / "train" / f"{a}_mask.tif").any() else (b, a)
        outcome = {
            "report": {empty: "flag", full: "flag"},
            "drop-conflicts": ({empty: "drop", full: "drop"} if kind == "exact"
                               else {empty: "flag", full: "flag"}),
            "drop-empty": {empty: "drop", full: "keep"},
            "drop-both": {empty: "drop", full: "drop"},
            "propagate": {empty: "propagate", full: "keep"},
        }[policy]
        expected.update(outcome)
    return expected


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_outcome_row_by_row(synth_set: Path, tmp_path: Path, policy: str) -> None:
    before = tree_digest(synth_set)
    out = tmp_path / "out"
    result = nerveseg("dedupe", synth_set / "train", "--out", out, "--policy", policy)
    assert result.exit_code == 0, result.stderr
    expected = expected_actions(synth_set, policy)
    rows = {row["id"]: row for row in read_rows(out / "manifest.csv")}
    assert list(next(iter(rows.values())))[-2:] == ["dup_group", "action"]
    partner = {}
    for a, b, _ in planted_pairs(synth_set):
        partner[a], partner[b] = b, a
    dropped = []
    for sample in discover_images(synth_set / "train"):
        action = expected.get(sample.id, "keep")
        if action == "drop":
            assert sample.id not in rows
            dropped.append(sample.id)
            continue
        row = rows[sample.id]
        assert row["action"] == action, (sample.id, row)
        assert (row["dup_group"] != "") == (sample.id in partner)
        if sample.id in partner and partner[sample.id] in rows:
            assert row["dup_group"] == rows[partner[sample.id]]["dup_group"]
        if action == "propagate":
            assert row["mask"] == f"masks/{sample.id}.png" and row["has_mask"] == "1"
            donor = read_mask(synth_set / "train" / f"{partner[sample.id]}_mask.tif")
            np.testing.assert_array_equal(read_mask(out / row["mask"]), donor)
        else:
            assert (out / row["mask"]).resolve() == sample.mask.resolve()
            assert row["has_mask"] == str(int(read_mask(sample.mask).any()))
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["dropped_ids"]) == sorted(dropped)
    assert summary["kept"] == len(rows) == 40 - len(dropped)
    assert (out / "masks").is_dir() == (policy == "propagate")
    assert tree_digest(synth_set) == before  # inputs never modified


def test_policies_on_a_three_member_group() -> None:
    # images 0 (area 50), 1 (area 80, disagrees with 0), 2 (empty), 3 alone
    pairs = Pairs(a=np.array([0, 0]), b=np.array([1, 2]), exact=np.array([False, False]),
                  distance=np.array([0.001, 0.002]), mask_dice=np.array([0.1, 0.0]),
                  conflict=np.array([True, True]))
    groups = np.array([0, 0, 0, -1])
    areas = np.array([50, 80, 0, 10])
    digests = np.array([b"a", b"b", b"c", b"d"], dtype="S16")

    def run(policy: str) -> tuple[list[str], list[int]]:
        actions, donors = decide_actions(policy, pairs, groups, areas, digests)
        return list(actions), list(donors)

    assert run("report")[0] == ["flag", "flag", "flag", "keep"]
    assert run("drop-conflicts")[0] == ["flag", "flag", "flag", "keep"]  # no exact pairs
    assert run("drop-empty")[0] == ["flag", "flag", "drop", "keep"]  # 0 and 1 still disagree
    assert run("drop-both")[0] == ["drop", "drop", "drop", "keep"]
    assert run("propagate") == (["flag", "flag", "propagate", "keep"], [-1, -1, 1, -1])


def test_drop_conflicts_drops_whole_exact_class_only() -> None:
    # 0 == 1 == 2 exactly (2 has an empty mask); 3 is a near duplicate of 2
    pairs = Pairs(a=np.array([0, 0, 1, 2]), b=np.array([1, 2, 2, 3]),
                  exact=np.array([True, True, True, False]),
                  distance=np.array([0, 0, 0, 0.001]), mask_dice=np.array([1.0, 0, 0, 1.0]),
                  conflict=np.array([False, True, True, False]))
    digests = np.array([b"x", b"x", b"x", b"y"], dtype="S16")
    actions, _ = decide_actions("drop-conflicts", pairs, np.zeros(4, dtype=np.int64),
                                np.array([5, 5, 0, 0]), digests)
    assert list(actions) == ["drop", "drop", "drop", "keep"]


def test_no_masks_finds_duplicates_of_an_unlabelled_set(synth_set: Path, tmp_path: Path) -> None:
    test = tmp_path / "test"
    shutil.copytree(synth_set / "test", test)
    shutil.copy(test / "1.tif", test / "9.tif")
    out = tmp_path / "out"
    result = nerveseg("dedupe", test, "--out", out, "--no-masks")
    assert result.exit_code == 0, result.stderr
    rows = read_rows(out / "duplicates.csv")
    assert [(r["id_a"], r["id_b"], r["kind"], r["conflict"]) for r in rows] == [
        ("1", "9", "exact", "")]
    manifest = read_rows(out / "manifest.csv")
    assert len(manifest) == 5 and {r["action"] for r in manifest} == {"keep"}
    assert {r["dup_group"] for r in manifest if r["id"] in ("1", "9")} == {"0"}


def test_montage_draws_each_conflicting_pair(synth_set: Path, tmp_path: Path) -> None:
    result = nerveseg("dedupe", synth_set / "train", "--out", tmp_path / "a",
                      "--montage", tmp_path / "all.png")
    assert result.exit_code == 0, result.stderr
    assert "8 of 8" in result.stderr
    result = nerveseg("dedupe", synth_set / "train", "--out", tmp_path / "b",
                      "--montage", tmp_path / "two.png", "--montage-pairs", "2")
    assert "2 of 8" in result.stderr
    full, two = (cv2.imread(str(tmp_path / name)) for name in ("all.png", "two.png"))
    assert full.ndim == 3 and full.shape[0] == 4 * two.shape[0]
    assert full.shape[1] >= 2 * 64  # two tiles side by side
    # the outlines are drawn in colour on grayscale tiles
    assert np.any((full[..., 2] > 200) & (full[..., 1] < 80))


# --------------------------------------------------------------------------------------------
# vectorised pieces against brute force


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=30))
def test_pairs_within_classes_matches_brute_force(codes: list[int]) -> None:
    i, j = pairs_within_classes(np.array(codes, dtype=np.int64))
    expected = {(p, q) for p in range(len(codes)) for q in range(p + 1, len(codes))
                if codes[p] == codes[q]}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected and len(i) == len(expected)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 7), st.sampled_from([0.001, 0.05, 0.3]))
def test_near_pairs_matches_full_matrix(seed: int, block_rows: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 16))
    vectors = centres[rng.integers(0, 4, 23)] + 0.1 * rng.standard_normal((23, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    groups = [np.arange(0, 23, 2), np.arange(1, 23, 2)]
    a, b, d = near_pairs(vectors, groups, threshold, block_rows=block_rows)
    full = 1 - vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    expected = {(p, q) for g in groups for p in g for q in g
                if p < q and full[p, q] <= threshold}
    found = set(zip(a.tolist(), b.tolist(), strict=True))
    borderline = {(p, q) for g in groups for p in g for q in g
                  if p < q and abs(full[p, q] - threshold) < 1e-5}
    assert found - borderline == expected - borderline
    np.testing.assert_allclose(d, np.maximum(full[a, b], 0), atol=1e-5)


def test_pair_mask_dice_matches_direct_computation() -> None:
    rng = np.random.default_rng(1)
    masks = [rng.random((7, 9)) < p for p in (0.0, 0.3, 0.5, 0.0, 0.7)]
    masks.append(rng.random((5, 4)) < 0.5)  # another size
    masks.append(rng.random((5, 4)) < 0.5)
    prints = dedupe_module.Fingerprints(
        digests=np.zeros(len(masks), dtype="S16"), signatures=np.zeros((len(masks), 1)),
        shapes=np.array([m.shape for m in masks]),
        mask_areas=np.array([int(m.sum()) for m in masks]),
        packed_masks=[np.packbits(m) if m.any() else None for m in masks])
    a = np.array([0, 0, 1, 1, 2, 5])
    b = np.array([3, 1, 2, 4, 4, 6])
    dice = pair_mask_dice(prints, a, b)
    for k, (i, j) in enumerate(zip(a, b, strict=True)):
        total = masks[i].sum() + masks[j].sum()
        expected = 1.0 if total == 0 else 2 * (masks[i] & masks[j]).sum() / total
        assert dice[k] == pytest.approx(expected)
    np.testing.assert_array_equal(prints.mask(4), masks[4])


def test_duplicate_groups_are_components_numbered_by_first_member() -> None:
    groups = duplicate_groups(8, np.array([5, 3, 0]), np.array([7, 5, 1]))
    assert groups.tolist() == [0, 0, -1, 1, -1, 1, -1, 1]


def test_signature_ignores_brightness_and_flat_images_match_nothing() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(50, 150, (84, 116)).astype(np.uint8)
    brighter = image + np.uint8(20)
    assert 1 - float(image_signature(image) @ image_signature(brighter)) < 1e-5
    assert not image_signature(np.full((84, 116), 7, np.uint8)).any()


def test_a_threshold_that_matches_everything_is_refused(synth_set: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedupe_module, "MAX_PAIRS", 20)
    with pytest.raises(NervesegError, match="too loose"):
        dedupe(synth_set / "train", near_threshold=1.0)


def test_cli_defaults_match_the_library() -> None:
    assert dedupe_cli.DEFAULT_NEAR_THRESHOLD == dedupe_module.DEFAULT_NEAR_THRESHOLD
    assert dedupe_cli.DEFAULT_CONFLICT_DICE == dedupe_module.DEFAULT_CONFLICT_DICE
    assert [p.value for p in dedupe_cli.Policy] == list(POLICIES)


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


def test_empty_image_set(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert_bad_input(nerveseg("dedupe", tmp_path / "empty", "--out", out), "no images")
    assert not out.exists()


def test_images_without_masks_need_no_masks(synth_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_bad_input(nerveseg("dedupe", synth_set / "test", "--out", out),
                     "have no mask", "--no-masks")
    assert not out.exists()


def test_mask_size_differing_from_its_image(synth_set: Path, tmp_path: Path) -> None:
    train = tmp_path / "train"
    shutil.copytree(synth_set / "train", train)
    write_image(train / "2_3_mask.tif", np.zeros((10, 10), np.uint8))
    out = tmp_path / "out"
    assert_bad_input(nerveseg("dedupe", train, "--out", out), "2_3_mask.tif", "10x10", "64x48")
    assert not out.exists()


def test_manifest_missing_columns(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,mask\n1_1,a.tif,a_mask.tif\n")
    out = tmp_path / "out"
    assert_bad_input(nerveseg("dedupe", manifest, "--out", out), "lacks column",
                     "subject", "has_mask")
    assert not out.exists()


def test_manifest_pointing_at_missing_files(synth_set: Path, tmp_path: Path) -> None:
    samples = discover_images(synth_set / "train")[:3]
    samples.append(Sample("1_99", tmp_path / "gone.tif", tmp_path / "gone_mask.tif", "1"))
    write_manifest(tmp_path / "m.csv", samples)
    out = tmp_path / "out"
    assert_bad_input(nerveseg("dedupe", tmp_path / "m.csv", "--out", out), "gone",
                     "no such file")
    assert not out.exists()


def test_existing_outputs_are_refused(synth_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_bad_input(nerveseg("dedupe", synth_set / "train", "--out", out), "not empty")
    montage = tmp_path / "m.png"
    montage.write_bytes(b"")
    assert_bad_input(nerveseg("dedupe", synth_set / "train", "--out", tmp_path / "new",
                              "--montage", montage), "exists")
    assert not (tmp_path / "new").exists() and (out / "keep.txt").read_text() == "mine"
