"""Outputs that hold symbolic links, and outputs of several parts (issue 26, items 1 and 2),
through the command line.

1. Every command that writes a folder, given an existing output folder (``--overwrite``, and
   ``--resume`` where there is one) holding a symbolic link that leaves it (named like a
   class folder, or like a file the command writes) or a link to another of its folders:
   exit 2, one ``error:`` line naming the link, nothing written anywhere (``assert_refused``).
2. An output of several parts (class folders, ``classes.json``, provenance) is put in place
   whole or not at all: a file where a class folder goes is refused, naming the user's path
   (never a hidden stage), with the existing output untouched.
3. What stays allowed: ``--out`` itself a link to a folder, a link to a file inside the
   output (a write replaces the link, never its file), and a file output that is a link (the
   link is replaced, its target untouched).

Binary cases use the session workspace (tests/conftest.py: ``data/``, ``folds.csv``, ``run/``,
``probs/``); cases of several classes a small module workspace made the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import CliResult, run_cli
from tests.hostile import (
    Case,
    Setup,
    case,
    cases,
    copy_tree,
    make_workspace,
    remove,
    run_case,
    snapshot,
    write,
)

CPU = ("--device", "cpu", "--workers", "1")
TINY = ("--arch", "unet-plain", "--width", "2", "--epochs", "1", "--batch-size", "8")
RUN = ("{ws}/folds.csv", "--fold", "0", *TINY, "--out", "{ws}/out", *CPU)
OUT = "{ws}/out"
LEAVES = "outside the output"
FOLDER_LINK = "a symbolic link to the folder"
FILE_THERE = "a file is where the output puts a folder"
FOLDER_THERE = "a folder is where the output puts a file"


def ok(*args: str | Path) -> CliResult:
    result = run_cli(*args)
    assert result.exit_code == 0, (args, result.stderr, result.exception)
    return result


def link(rel: str, target: str) -> Setup:
    """The symlink ``rel`` -> the workspace's ``target`` (its folders made as needed)."""
    def step(ws: Path) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).symlink_to(ws / target)
    return step


def leaving(name: str, *parts: str, at: str, to: str, setup: Sequence[Setup] = ()) -> Case:
    """A case whose output holds the link ``at`` -> ``to`` that leaves it."""
    return case(name, *parts, setup=[*setup, link(at, to)], expect=[f"{{ws}}/{at}", LEAVES])


# --------------------------------------------------------------------------------------------
# 1. links out of an output folder, every command that writes one (binary workspace)

PREDICT = ("predict", "{ws}/run", "{ws}/data/test", "--out", OUT, *CPU)
CRF = ("crf", "{ws}/probs", "{ws}/data/test", "--out", OUT, "--workers", "1")
SCORE = ("score", "{ws}/data/train_masks.csv", "{ws}/data/train", "--size", "64x48")


@cases(
    leaving("synth_class_like_folder", "synth", OUT, "--subjects", "2", "--per-subject", "2",
            "--test", "1", "--size", "32x32", "--overwrite", at="out/train", to="data/train"),
    leaving("dedupe_manifest", "dedupe", "{ws}/data/train", "--out", OUT, "--overwrite",
            "--workers", "1", at="out/manifest.csv", to="folds.csv"),
    leaving("dedupe_deep_inside", "dedupe", "{ws}/data/train", "--out", OUT, "--overwrite",
            "--workers", "1", at="out/masks/1_1_mask.png", to="data/train/1_1_mask.png"),
    leaving("train_overwrite", "train", *RUN, "--overwrite", at="out/config.json",
            to="run/config.json"),
    leaving("train_resume", "train", "--resume", OUT, *CPU, at="out/nerve", to="data/train",
            setup=[copy_tree("run", "out")]),
    leaving("predict_overwrite_class_folder", *PREDICT, "--overwrite", at="out/vessel",
            to="data/test"),
    leaving("predict_resume_provenance", *PREDICT, "--resume", at="out/prediction.json",
            to="folds.csv", setup=[copy_tree("probs", "out"), remove("out/prediction.json")]),
    leaving("predict_masks", *PREDICT, "--masks", "{ws}/m", "--overwrite", at="m/1.png",
            to="data/test/1.tif"),
    leaving("ensemble_class_folder", "ensemble", "{ws}/probs", "{ws}/probs2", "--out", OUT,
            "--overwrite", "--workers", "1", at="out/vessel", to="probs",
            setup=[copy_tree("probs", "probs2")]),
    leaving("crf_overwrite_map", *CRF, "--overwrite", at="out/1.png", to="probs/1.png"),
    leaving("crf_resume_class_folder", *CRF, "--resume", at="out/nerve", to="probs"),
    leaving("score_out", *SCORE, "--out", OUT, "--overwrite", at="out/summary.json",
            to="folds.csv"),
    leaving("score_overlays", *SCORE, "--overlays", "{ws}/ov", "--images", "{ws}/data/train",
            "--overwrite", at="ov/old", to="data/test"),
    leaving("rle_decode_map", "rle-decode", "{ws}/data/train_masks.csv", "--size", "64x48",
            "--out", OUT, "--overwrite", "--workers", "1", at="out/1_1.png",
            to="data/test/1.tif"),
    leaving("demo", "demo", OUT, "--overwrite", at="out/data", to="data"),
    case("predict_folder_link_inside", *PREDICT, "--overwrite",
         setup=[write("out/nerve/keep.png"), link("out/vessel", "out/nerve")],
         expect=["{ws}/out/vessel", FOLDER_LINK]),
)
def test_links_out_of_an_output_are_refused(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


@cases(
    case("score_folder_for_its_summary", *SCORE, "--out", OUT, "--overwrite",
         setup=[write("out/summary.json/keep.txt")],
         expect=["{ws}/out/summary.json", FOLDER_THERE]),
    case("rle_decode_folder_for_a_mask", "rle-decode", "{ws}/data/train_masks.csv", "--size",
         "64x48", "--out", OUT, "--overwrite", "--workers", "1",
         setup=[write("out/1_2.png/keep.txt")], expect=["{ws}/out/1_2.png", FOLDER_THERE]),
)
def test_a_folder_where_an_output_file_goes_is_refused(case: Case, workspace: Path) -> None:
    result = run_case(case, workspace)
    assert ".partial" not in result.stderr, result.stderr


def test_a_refused_link_is_named_with_where_it_points(workspace: Path) -> None:
    link("out/vessel", "data/test")(workspace)
    result = run_cli(*[p.replace("{ws}", str(workspace)) for p in PREDICT], "--overwrite")
    assert f"{workspace}/out/vessel: a symbolic link to {workspace}/data/test" in result.stderr
    assert "remove the link" in result.stderr
    assert sorted(p.name for p in (workspace / "data" / "test").iterdir()) == \
        ["1.tif", "2.tif", "3.tif", "4.tif", "5.tif", "6.tif"]


# --------------------------------------------------------------------------------------------
# 2. several classes: links, and a file where a class folder goes

NAMES = "background,nerve,vessel"
LONG_CSV = "ImageId,ClassId,EncodedPixels\n1_1,1,1 3\n1_1,2,10 2\n1_2,1,\n1_2,2,5 5\n"


@pytest.fixture(scope="module")
def mc_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/`` (synth --classes 3), ``folds.csv``, ``run/`` (3 classes), ``probs/`` (its maps
    of data/test: classes.json and a folder per class) and ``long.csv`` (2 ids, 2 classes).
    Never changed."""
    base = tmp_path_factory.mktemp("links") / "base"
    ok("synth", base / "data", "--classes", "3", "--subjects", "2", "--per-subject", "2",
       "--test", "2", "--size", "32x32", "--workers", "1")
    ok("split", base / "data" / "train", "--classes", "3", "--folds", "2", "--out",
       base / "folds.csv", "--workers", "1")
    ok("train", base / "folds.csv", "--classes", NAMES, "--fold", "0", *TINY, "--out",
       base / "run", *CPU)
    ok("predict", base / "run", base / "data" / "test", "--out", base / "probs", *CPU)
    (base / "long.csv").write_text(LONG_CSV)
    return base


@pytest.fixture
def mc_workspace(mc_base: Path, tmp_path: Path) -> Path:
    return make_workspace(mc_base, tmp_path / "ws")


MC_PREDICT = ("predict", "{ws}/run", "{ws}/data/test", "--out", OUT, *CPU)
MC_CRF = ("crf", "{ws}/probs", "{ws}/data/test", "--out", OUT, "--workers", "1")
MC_ENSEMBLE = ("ensemble", "{ws}/probs", "{ws}/probs2", "--out", OUT, "--workers", "1")
DECODE = ("rle-decode", "{ws}/long.csv", "--classes", NAMES, "--size", "32x32", "--out", OUT,
          "--overwrite", "--workers", "1")
EARLIER = [copy_tree("probs", "out")]  # an earlier output of the same classes


def in_the_way(name: str, *parts: str, setup: Sequence[Setup], at: str = "out/vessel",
               there: str = FILE_THERE) -> Case:
    return case(name, *parts, setup=setup, expect=[f"{{ws}}/{at}", there])


@cases(
    leaving("predict_class_folder_to_images", *MC_PREDICT, "--overwrite", at="out/vessel",
            to="data/test"),
    leaving("predict_resume_class_folder", *MC_PREDICT, "--resume", at="out/vessel",
            to="data/test", setup=[*EARLIER, remove("out/vessel")]),
    leaving("crf_class_folder_to_its_input", *MC_CRF, "--overwrite", at="out/nerve",
            to="probs/nerve"),
    leaving("crf_resume_class_map", *MC_CRF, "--resume", at="out/nerve/1.png",
            to="probs/nerve/1.png"),
    leaving("ensemble_class_folder_to_its_input", *MC_ENSEMBLE, "--overwrite", at="out/nerve",
            to="probs/nerve", setup=[copy_tree("probs", "probs2")]),
    leaving("rle_decode_class_folder", *DECODE, at="out/nerve", to="data/test"),
    leaving("rle_decode_classes_json", *DECODE, at="out/classes.json",
            to="probs/classes.json"),
    in_the_way("rle_decode_file_for_a_class", *DECODE,
               setup=[write("out/classes.json", "{}"), write("out/vessel")]),
    in_the_way("rle_decode_file_for_the_first_class", *DECODE,
               setup=[write("out/nerve")], at="out/nerve"),
    in_the_way("rle_decode_file_for_a_class_after_a_map_it_replaces", *DECODE,
               setup=[write("out/nerve/1_1.png", "old"), write("out/vessel")]),
    in_the_way("ensemble_file_for_a_class", *MC_ENSEMBLE, "--overwrite",
               setup=[copy_tree("probs", "probs2"), *EARLIER, remove("out/vessel"),
                      write("out/vessel")]),
    in_the_way("predict_file_for_a_class", *MC_PREDICT, "--overwrite",
               setup=[*EARLIER, remove("out/vessel"), write("out/vessel")]),
    in_the_way("crf_file_for_a_class", *MC_CRF, "--overwrite",
               setup=[write("out/classes.json", "{}"), write("out/vessel")]),
    in_the_way("synth_file_for_its_test_folder", "synth", OUT, "--classes", "3",
               "--subjects", "2", "--per-subject", "2", "--test", "1", "--size", "32x32",
               "--overwrite", "--workers", "1", setup=[write("out/test")], at="out/test"),
)
def test_outputs_of_several_classes_land_whole_or_not_at_all(case: Case,
                                                              mc_workspace: Path) -> None:
    result = run_case(case, mc_workspace)
    assert ".partial" not in result.stderr and ".tmp" not in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# 3. links that stay allowed


def test_an_output_that_is_a_link_to_a_folder_is_written_in_that_folder(
        mc_workspace: Path, tmp_path: Path) -> None:
    ws = mc_workspace
    elsewhere = tmp_path / "elsewhere" / "maps"
    elsewhere.mkdir(parents=True)
    (elsewhere / "notes.txt").write_text("mine")
    (ws / "out").symlink_to(elsewhere)
    ok(*[p.replace("{ws}", str(ws)) for p in DECODE])
    assert (ws / "out").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == \
        ["classes.json", "nerve", "notes.txt", "vessel"]
    assert sorted(p.name for p in (elsewhere / "nerve").iterdir()) == ["1_1.png", "1_2.png"]
    left = [p for p in [*ws.iterdir(), *elsewhere.parent.iterdir()] if p.name.startswith(".")]
    assert not left, left  # no stage or backup left beside either


def test_a_link_to_a_file_inside_the_output_is_replaced_not_written_through(
        mc_workspace: Path) -> None:
    ws = mc_workspace
    (ws / "out" / "nerve").mkdir(parents=True)
    (ws / "out" / "kept.png").write_bytes(b"not a map")
    (ws / "out" / "nerve" / "1_1.png").symlink_to(ws / "out" / "kept.png")
    ok(*[p.replace("{ws}", str(ws)) for p in DECODE])
    written = ws / "out" / "nerve" / "1_1.png"
    assert not written.is_symlink() and written.read_bytes().startswith(b"\x89PNG")
    assert (ws / "out" / "kept.png").read_bytes() == b"not a map"


def test_a_file_output_that_is_a_link_is_replaced_and_its_target_kept(workspace: Path,
                                                                      tmp_path: Path) -> None:
    """split and export write files: a link there is replaced, never written through."""
    ws = workspace
    other = tmp_path / "other.csv"
    other.write_text("someone else's\n")
    (ws / "new.csv").symlink_to(other)
    ok("split", ws / "data" / "train", "--folds", "2", "--out", ws / "new.csv", "--overwrite",
       "--workers", "1")
    assert not (ws / "new.csv").is_symlink() and "fold" in (ws / "new.csv").read_text()
    assert other.read_text() == "someone else's\n"
    from nerveseg_cli.inference.export import sidecar_path

    model = ws / "m.onnx"
    model.symlink_to(other)
    sidecar_path(model).symlink_to(ws / "folds.csv")
    before = (ws / "folds.csv").read_bytes()
    ok("export", ws / "run", "--out", model, "--overwrite")
    assert not model.is_symlink() and not sidecar_path(model).is_symlink()
    assert other.read_text() == "someone else's\n"
    assert (ws / "folds.csv").read_bytes() == before


def test_overwriting_keeps_other_entries_and_replaces_the_same_names(mc_workspace: Path
                                                                    ) -> None:
    """The commit merges: an earlier output's other files stay, its maps are replaced."""
    ws = mc_workspace
    (ws / "out" / "nerve").mkdir(parents=True)
    (ws / "out" / "nerve" / "1_1.png").write_bytes(b"old")
    (ws / "out" / "nerve" / "9_9.png").write_bytes(b"other")
    before = snapshot(ws / "probs")
    ok(*[p.replace("{ws}", str(ws)) for p in DECODE])
    assert (ws / "out" / "nerve" / "9_9.png").read_bytes() == b"other"
    assert (ws / "out" / "nerve" / "1_1.png").read_bytes().startswith(b"\x89PNG")
    assert snapshot(ws / "probs") == before
    assert not [p for p in ws.rglob(".*")], "hidden stage or backup left"
