"""``ensemble``: each method against a plain numpy reference, presence, checks, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from nerveseg_cli.inference.asme import asme_weights
from nerveseg_cli.io.probmaps import read_probability_values, write_presence, write_probability
from tests.conftest import assert_one_line_error, run_cli

SIZES = {"1_1": (6, 8), "1_2": (5, 9), "2_1": (7, 4), "10_3": (6, 8)}


def make_members(root: Path, count: int = 3, seed: int = 0,
                 sizes: dict[str, tuple[int, int]] = SIZES) -> list[Path]:
    """``count`` probability folders of random maps, one map per id of ``sizes``."""
    rng = np.random.default_rng(seed)
    folders = []
    for k in range(count):
        folder = root / f"m{k}"
        for sample_id, shape in sizes.items():
            write_probability(folder / f"{sample_id}.png",
                              rng.integers(0, 256, shape, dtype=np.uint8))
        folders.append(folder)
    return folders


def member_values(folders: list[Path], sample_id: str) -> np.ndarray:
    return np.stack([read_probability_values(f / f"{sample_id}.png") for f in folders])


def reference(values: np.ndarray, method: str, weights: list[float] | None = None,
              threshold: float = 0.5) -> np.ndarray:
    """Plain numpy: probabilities p = v / 255, merged in float64."""
    p = values / 255.0
    if method == "mean":
        return p.mean(axis=0)
    if method == "weighted":
        w = np.asarray(weights, dtype=np.float64)
        return np.tensordot(w / w.sum(), p, axes=1)
    if method == "vote":
        votes = (p > threshold).sum(axis=0)
        return (votes > len(values) / 2).astype(float)
    raise AssertionError(method)


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(("method", "extra"), [
    ("mean", []), ("weighted", ["--weights", "1,2,5"]), ("vote", []),
    ("vote", ["--threshold", "0.3"]),
])
def test_methods_match_numpy_reference(tmp_path: Path, method: str, extra: list[str]) -> None:
    members = make_members(tmp_path)
    before = [folder_digest(m) for m in members]
    out = tmp_path / "out"
    result = run_cli("ensemble", *members, "--out", out, "--method", method, *extra)
    assert result.exit_code == 0, result.stderr
    threshold = float(extra[1]) if "--threshold" in extra else 0.5
    weights = [1.0, 2.0, 5.0] if method == "weighted" else None
    for sample_id, shape in SIZES.items():
        merged = read_probability_values(out / f"{sample_id}.png")
        assert merged.shape == shape
        expected = reference(member_values(members, sample_id), method, weights, threshold)
        # The stored value is the nearest 8-bit level to the exact merged probability.
        assert np.all(np.abs(merged / 255.0 - expected) <= 0.5 / 255 + 1e-6), sample_id
    assert [folder_digest(m) for m in members] == before  # inputs untouched
    record = json.loads((out / "prediction.json").read_text())
    assert record["command"] == "ensemble"
    assert record["options"]["method"] == method
    assert len(record["inputs"]["members"]) == 3
    assert not (out / "weights.csv").exists()


def test_asme_weights_csv_and_maps(tmp_path: Path) -> None:
    members = make_members(tmp_path, count=4, seed=3)
    out = tmp_path / "out"
    result = run_cli("ensemble", *members, "--out", out, "--method", "asme",
                     "--asme-base", "50", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == len(SIZES) and summary["method"] == "asme"
    with open(out / "weights.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", *map(str, members)]
    assert [r[0] for r in rows[1:]] == ["1_1", "1_2", "2_1", "10_3"]
    for row in rows[1:]:
        values = member_values(members, row[0])
        expected = asme_weights(values > 127, 50.0)
        np.testing.assert_allclose([float(x) for x in row[1:]], expected, atol=1e-6)
        merged = read_probability_values(out / f"{row[0]}.png")
        exact = np.tensordot(expected, values / 255.0, axes=1)
        assert np.all(np.abs(merged / 255.0 - exact) <= 0.5 / 255 + 1e-5)
    mean_weights = list(summary["mean_weights"].values())
    assert sum(mean_weights) == pytest.approx(1.0)


def test_asme_discounts_an_outlier_member(tmp_path: Path) -> None:
    blob = np.zeros((20, 20), dtype=np.uint8)
    blob[5:15, 5:15] = 230
    members = []
    for k, values in enumerate([blob, np.roll(blob, 1, axis=0), np.roll(blob, 1, axis=1),
                                np.roll(blob, (9, 9), axis=(0, 1))]):
        write_probability(tmp_path / f"m{k}" / "1.png", values)
        members.append(tmp_path / f"m{k}")
    out = tmp_path / "out"
    assert run_cli("ensemble", *members, "--out", out, "--method", "asme").exit_code == 0
    with open(out / "weights.csv", newline="") as handle:
        weights = [float(x) for x in list(csv.reader(handle))[1][1:]]
    assert int(np.argmin(weights)) == 3 and weights[3] < 0.1


def test_presence_is_merged_like_the_maps(tmp_path: Path) -> None:
    members = make_members(tmp_path, count=3)
    presences = [{"1_1": 0.9, "1_2": 0.2, "2_1": 0.6, "10_3": 0.0},
                 {"1_1": 0.7, "1_2": 0.4, "2_1": 0.1, "10_3": 0.0},
                 {"1_1": 0.2, "1_2": 0.9, "2_1": 0.3, "10_3": 1.0}]
    for folder, presence in zip(members, presences, strict=True):
        write_presence(folder / "presence.csv", presence)

    def merged(*options: str) -> dict[str, float]:
        out = tmp_path / "out"
        result = run_cli("ensemble", *members, "--out", out, "--overwrite", *options)
        assert result.exit_code == 0, result.stderr
        with open(out / "presence.csv", newline="") as handle:
            return {row["id"]: float(row["presence"]) for row in csv.DictReader(handle)}

    table = np.array([[p[i] for i in SIZES] for p in presences])
    np.testing.assert_allclose(list(merged("--method", "mean").values()), table.mean(axis=0),
                               atol=1e-6)
    np.testing.assert_allclose(list(merged("--method", "weighted", "--weights", "1,1,2")
                                    .values()), [0.25, 0.25, 0.5] @ table, atol=1e-6)
    assert merged("--method", "vote") == {"1_1": 1.0, "1_2": 0.0, "2_1": 0.0, "10_3": 0.0}


def test_presence_from_some_members_warns(tmp_path: Path) -> None:
    members = make_members(tmp_path, count=2)
    write_presence(members[0] / "presence.csv", dict.fromkeys(SIZES, 0.8))
    out = tmp_path / "out"
    result = run_cli("ensemble", *members, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "presence.csv merged from 1 of 2 folders" in result.stderr
    assert (out / "presence.csv").read_text().count("0.800000") == len(SIZES)


def test_different_ids_are_listed_and_allow_missing_merges_what_is_there(tmp_path: Path
                                                                        ) -> None:
    members = make_members(tmp_path, count=3)
    (members[1] / "2_1.png").unlink()
    (members[2] / "10_3.png").unlink()
    out = tmp_path / "out"
    result = run_cli("ensemble", *members, "--out", out)
    assert_one_line_error(result, "different ids", f"{members[1]} lacks 1 ids (first: 2_1)",
                          f"{members[2]} lacks 1 ids (first: 10_3)", "--allow-missing")
    assert not out.exists()
    result = run_cli("ensemble", *members, "--out", out, "--allow-missing", "--method",
                     "weighted", "--weights", "1,3,4", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["merged_from_fewer_folders"] == 2
    merged = read_probability_values(out / "2_1.png")
    present = [members[0], members[2]]
    expected = reference(member_values(present, "2_1"), "weighted", [1, 4])
    assert np.all(np.abs(merged / 255.0 - expected) <= 0.5 / 255 + 1e-6)


def test_different_sizes_are_an_error_even_with_allow_missing(tmp_path: Path) -> None:
    members = make_members(tmp_path, count=2)
    write_probability(members[1] / "1_2.png", np.zeros((9, 5)))
    for extra in ([], ["--allow-missing"]):
        result = run_cli("ensemble", *members, "--out", tmp_path / "out", *extra)
        assert_one_line_error(result, "differ in size for 1 ids",
                              f"1_2 is 9x5 in {members[0]} but 5x9 in {members[1]}")
    assert not (tmp_path / "out").exists()


def test_chains_into_rle_encode_score_and_another_ensemble(tmp_path: Path) -> None:
    members = make_members(tmp_path, count=2)
    out = tmp_path / "out"
    assert run_cli("ensemble", *members, "--out", out).exit_code == 0
    again = tmp_path / "again"
    result = run_cli("ensemble", out, members[0], "--out", again, "--method", "asme")
    assert result.exit_code == 0, result.stderr
    upstream = json.loads((again / "prediction.json").read_text())["upstream"]
    assert upstream[0]["command"] == "ensemble" and upstream[1] is None
    assert run_cli("rle-encode", again, "--out", tmp_path / "sub.csv").exit_code == 0
    result = run_cli("score", again, out, "--json")
    assert result.exit_code == 0, result.stderr


def _sixteen_bit(folder: Path) -> None:
    cv2.imwrite(str(folder / "1_1.png"), np.zeros((6, 8), np.uint16))


def _tif(folder: Path) -> None:
    cv2.imwrite(str(folder / "9.tif"), np.zeros((6, 8), np.uint8))


def _rgb(folder: Path) -> None:
    cv2.imwrite(str(folder / "1_1.png"), np.zeros((6, 8, 3), np.uint8))


@pytest.mark.parametrize(("spoil", "fragments"), [
    (_sixteen_bit, ["1_1.png", "16-bit PNG"]),
    (_tif, ["9.tif", "not a PNG"]),
    (_rgb, ["1_1.png", "RGB PNG"]),
])
def test_bad_files_in_a_member_are_named(tmp_path: Path, spoil, fragments: list[str]) -> None:
    members = make_members(tmp_path, count=2)
    spoil(members[1])
    result = run_cli("ensemble", *members, "--out", tmp_path / "out")
    assert_one_line_error(result, str(members[1]), *fragments)
    assert not (tmp_path / "out").exists()


def test_bad_options_and_folders(tmp_path: Path) -> None:
    members = make_members(tmp_path, count=2)
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    cases = [
        (["ensemble", members[0], tmp_path / "empty"], ["empty", "no probability maps"]),
        (["ensemble", members[0]], ["at least two"]),
        (["ensemble", *members, "--method", "median"], ["median", "mean, weighted"]),
        (["ensemble", *members, "--method", "weighted"], ["needs --weights"]),
        (["ensemble", *members, "--method", "weighted", "--weights", "1,2,3"],
         ["3 values for 2 folders"]),
        (["ensemble", *members, "--method", "weighted", "--weights", "1,x"],
         ["--weights '1,x': 'x' is not a number", "a comma-separated list"]),
        (["ensemble", *members, "--method", "weighted", "--weights", "0,0"],
         ["positive sum"]),
        (["ensemble", *members, "--weights", "1,2"], ["only used with --method weighted"]),
        (["ensemble", *members, "--method", "asme", "--asme-base", "0"], ["must be a positive"]),
        (["ensemble", members[0], members[0]], ["given twice"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(run_cli(*args, "--out", out), *fragments)
    assert not out.exists()
    assert_one_line_error(run_cli("ensemble", *members, "--out", members[0]),
                          "also an input")
    out.mkdir()
    (out / "old.png").write_bytes(b"")
    assert_one_line_error(run_cli("ensemble", *members, "--out", out), "not empty",
                          "--overwrite")


def test_help_lists_every_option() -> None:
    result = run_cli("ensemble", "--help")
    assert result.exit_code == 0
    for option in ("--out", "--method", "--weights", "--threshold", "--asme-base",
                   "--allow-missing", "--overwrite", "--workers", "--json"):
        assert option in result.stdout, option


def test_presence_is_not_written_when_an_id_has_none(tmp_path: Path) -> None:
    members = make_members(tmp_path, count=2)
    (members[0] / "2_1.png").unlink()
    write_presence(members[0] / "presence.csv",
                   {i: 0.5 for i in SIZES if i != "2_1"})
    out = tmp_path / "out"
    result = run_cli("ensemble", *members, "--out", out, "--allow-missing")
    assert result.exit_code == 0, result.stderr
    assert "presence.csv not written: 1 ids have no presence" in result.stderr
    assert not (out / "presence.csv").exists()
