"""Hostile input to the data commands: ``synth``, ``dedupe``, ``split`` (and ``split --check``),
``rle-decode``, ``rle-encode`` and ``score``.

One table of cases per command, each checked by ``tests.hostile.assert_refused`` against the
bad-input contract of docs/formats.md ("Conventions"): exit code 2, one ``error:`` line naming
the file (and the CSV line or manifest row) and what is wrong, no traceback, and the workspace
byte for byte as it was. The classes covered, where they apply to a command:

1. an output that is an input, lies inside one, holds one, or reaches one through a symlink;
2. existing outputs without ``--overwrite`` (a non-empty folder, a file, a file for a folder);
3. values that used to crash (integers beyond int64, huge sizes, NaN and zero sweep steps,
   bad ``--subject-regex``);
4. input that used to be accepted silently (short manifest rows, sloppy RLE spacing,
   header-only CSVs, manifests naming missing files or folders);
5. option values out of range, unknown options and missing arguments (one line, no panel);
6. file names that break CSVs and file systems (commas, spaces, quotes, newlines, 210 chars);
7. palette label maps without ``--label`` or with a label no pixel has;
8. failed runs leave nothing (overlays, postprocess.json, montages).

The palette set also gets positive checks: ``--label 1`` and ``--label 2`` select exactly the
nerve and the vessel pixels. A corrupt TIFF is run in a subprocess to see that OpenCV prints
nothing of its own on stderr. A case that fails is a library bug to fix, never a case to
weaken.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.hostile import Case, Setup, case, run_case, snapshot, write

INT64_OVERFLOW = "99999999999999999999999"


# --------------------------------------------------------------------------------------------
# building cases


def table(*items: Any) -> pytest.MarkDecorator:
    """``tests.hostile.cases`` that also checks the case names are unique."""
    params = [pytest.param(item, id=item.name) if isinstance(item, Case) else item
              for item in items]
    names = [p.id for p in params]
    assert len(names) == len(set(names)), "duplicate case names"
    return pytest.mark.parametrize("case", params)


def link(rel: str, target: str) -> Setup:
    """A symlink ``rel`` -> ``target`` (relative to the link's folder, i.e. the workspace)."""
    def step(ws: Path) -> None:
        (ws / rel).symlink_to(target)
    return step


def non_empty_folder(rel: str) -> Setup:
    return write(f"{rel}/keep.txt", "keep me")


def edit_line(rel: str, line: int, old: str, new: str) -> Setup:
    """Replace ``old`` by ``new`` in line ``line`` (1-based) of a text file."""
    def step(ws: Path) -> None:
        path = ws / rel
        lines = path.read_text().split("\n")
        assert old in lines[line - 1], (old, lines[line - 1])
        lines[line - 1] = lines[line - 1].replace(old, new, 1)
        path.write_text("\n".join(lines))
    return step


def corrupt(rel: str) -> Setup:
    return write(rel, b"II*\x00garbage")


def copy(rel: str, to: str) -> Setup:
    def step(ws: Path) -> None:
        shutil.copy(ws / rel, ws / to)
    return step


def images_without(missing: str) -> Setup:
    """``imgs/``: the training images (no masks) except ``missing``."""
    def step(ws: Path) -> None:
        (ws / "imgs").mkdir()
        for path in (ws / "data" / "train").glob("*.tif"):
            if not path.stem.endswith("_mask") and path.stem != missing:
                shutil.copy(path, ws / "imgs" / path.name)
    return step


def odd_folder(name: str) -> Setup:
    """``odd/``: the probability maps of ``probs/`` plus a copy of one named ``name``."""
    def step(ws: Path) -> None:
        folder = ws / "odd"
        folder.mkdir()
        for path in (ws / "probs").glob("*.png"):
            shutil.copy(path, folder / path.name)
        try:
            shutil.copy(ws / "probs" / "1.png", folder / name)
        except OSError as exc:
            pytest.skip(f"the file system refuses the name {name!r}: {exc}")
    return step


# the palette label-map set: ids, the nerve (1) and vessel (2) rectangles of each mask
PALETTE_SIZE = (32, 24)  # W, H
PALETTE_BOXES: dict[str, dict[int, tuple[slice, slice] | None]] = {
    "1_1": {1: (slice(2, 5), slice(3, 8)), 2: (slice(10, 12), slice(10, 12))},
    "1_2": {1: (slice(4, 6), slice(20, 24)), 2: None},
    "2_1": {1: None, 2: (slice(15, 18), slice(1, 4))},
    "2_2": {1: (slice(20, 21), slice(5, 12)), 2: (slice(0, 1), slice(31, 32))},
}


def palette_labels() -> dict[str, np.ndarray]:
    """Each id's label map: 0 background, 1 nerve, 2 vessel."""
    width, height = PALETTE_SIZE
    maps = {}
    for sample_id, boxes in PALETTE_BOXES.items():
        labels = np.zeros((height, width), np.uint8)
        for value, box in boxes.items():
            if box is not None:
                labels[box] = value
        maps[sample_id] = labels
    return maps


def make_palette_set(root: Path) -> Path:
    """A generic folder ``root``: grayscale ``images/ID.png`` and palette ``masks/ID.png``
    whose indices 0/1/2 are background/nerve/vessel."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    for sample_id, labels in palette_labels().items():
        height, width = labels.shape
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(
            root / "images" / f"{sample_id}.png")
        mask = Image.new("P", (width, height))
        mask.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
        mask.putdata(labels.ravel().tolist())
        mask.save(root / "masks" / f"{sample_id}.png")
    return root


def palette_set(ws: Path) -> None:
    make_palette_set(ws / "gen")


LABEL_MAP = "a label map of several classes (values 0, 1, 2); pass --label N"
NO_LABEL_5 = "no pixel of any mask equals --label 5 (values seen: 0, 1, 2)"
INSIDE = "lies inside the input"
IS_INPUT = "is also an input"
HOLDS = "holds the input"
NOT_EMPTY = "output folder is not empty"
SAFE_NAME = "is not a safe file name"


# --------------------------------------------------------------------------------------------
# synth

SYNTH = table(
    case("out_non_empty_folder", "synth", "{ws}/data", expect=["{ws}/data", NOT_EMPTY,
                                                               "--overwrite"]),
    case("out_is_a_file", "synth", "{ws}/folds.csv",
         expect=["{ws}/folds.csv", "output exists and is not a folder"]),
    case("out_beneath_a_file", "synth", "{ws}/folds.csv/sub",
         expect=["{ws}/folds.csv/sub", "cannot write"]),
    case("out_dangling_symlink", "synth", "{ws}/dl", "--subjects", "1", "--per-subject",
             "1", "--test", "0", "--size", "8x8", setup=link("dl", "nowhere"),
             expect=["{ws}/dl"]),
    case("size_20000x20000", "synth", "{ws}/out", "--size", "20000x20000",
         expect=["--size 20000x20000", "400,000,000 pixels", "more than"]),
    case("size_0x10", "synth", "{ws}/out", "--size", "0x10",
         expect=["--size '0x10'", "positive integers"]),
    case("subjects_0", "synth", "{ws}/out", "--subjects", "0", expect=["--subjects"]),
    case("workers_0", "synth", "{ws}/out", "--workers", "0", expect=["--workers"]),
    case("unknown_option", "synth", "{ws}/out", "--bogus", expect=["--bogus"]),
    case("missing_argument", "synth", expect=["Missing argument"]),
)


@SYNTH
def test_synth_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# dedupe

TRAIN = "{ws}/data/train"
FOLDS = "{ws}/folds.csv"

DEDUPE = table(
    # 1. outputs that are inputs
    case("out_is_input", "dedupe", TRAIN, "--out", TRAIN, expect=[TRAIN, IS_INPUT]),
    case("out_inside_input", "dedupe", TRAIN, "--out", f"{TRAIN}/audit",
         expect=[f"{TRAIN}/audit", INSIDE]),
    case("out_holds_input", "dedupe", TRAIN, "--out", "{ws}/data", "--overwrite",
         expect=["{ws}/data", HOLDS]),
    case("out_is_input_via_symlink", "dedupe", TRAIN, "--out", "{ws}/lnk",
         setup=link("lnk", "data/train"), expect=["{ws}/lnk", IS_INPUT]),
    case("input_via_symlink_out_inside", "dedupe", "{ws}/lnk", "--out", f"{TRAIN}/audit",
         setup=link("lnk", "data/train"), expect=[f"{TRAIN}/audit", INSIDE]),
    case("out_is_manifest", "dedupe", FOLDS, "--out", FOLDS, expect=[FOLDS, IS_INPUT]),
    case("out_inside_manifest_images", "dedupe", FOLDS, "--out", f"{TRAIN}/audit",
         expect=[f"{TRAIN}/audit", INSIDE]),
    case("out_holds_manifest_images", "dedupe", FOLDS, "--out", "{ws}/data", "--overwrite",
         expect=["{ws}/data", HOLDS]),
    case("montage_inside_input", "dedupe", TRAIN, "--out", "{ws}/audit", "--montage",
         f"{TRAIN}/m.png", expect=[f"{TRAIN}/m.png", INSIDE]),
    case("montage_inside_input_via_symlink", "dedupe", TRAIN, "--out", "{ws}/audit",
         "--montage", "{ws}/lnk/m.png", setup=link("lnk", "data/train"),
         expect=["{ws}/lnk/m.png", INSIDE]),
    # 2. existing outputs
    case("out_non_empty_folder", "dedupe", TRAIN, "--out", "{ws}/audit",
         setup=non_empty_folder("audit"), expect=["{ws}/audit", NOT_EMPTY, "--overwrite"]),
    case("out_is_a_file", "dedupe", TRAIN, "--out", FOLDS,
         expect=[FOLDS, "output exists and is not a folder"]),
    case("montage_exists", "dedupe", TRAIN, "--out", "{ws}/audit", "--montage",
         "{ws}/m.png", setup=write("m.png", b"not really"),
         expect=["{ws}/m.png", "output file exists", "--overwrite"]),
    case("montage_named_png_is_a_folder", "dedupe", TRAIN, "--out", "{ws}/audit",
         "--montage", "{ws}/m.png", setup=write("m.png/x", "x"),
         expect=["{ws}/m.png", "output is a folder"]),
    # 8. nothing written
    case("montage_not_an_image_suffix", "dedupe", TRAIN, "--out", "{ws}/audit", "--montage",
         "{ws}/x.txt", expect=["{ws}/x.txt", "a montage is an image"]),
    case("montage_not_an_image_inside_out", "dedupe", TRAIN, "--out", "{ws}/audit",
         "--montage", "{ws}/audit/x.txt", expect=["{ws}/audit/x.txt", "a montage is an image"]),
    # 3. values that used to crash
    case("subject_regex_invalid", "dedupe", TRAIN, "--out", "{ws}/audit", "--subject-regex",
         "(", expect=["--subject-regex '('", "not a valid regex"]),
    case("subject_regex_without_group", "dedupe", TRAIN, "--out", "{ws}/audit",
         "--subject-regex", "x", expect=["--subject-regex 'x'", "has no group"]),
    case("subject_regex_invalid_with_manifest", "dedupe", FOLDS, "--out", "{ws}/audit",
             "--subject-regex", "(", expect=["--subject-regex '('", "not a valid regex"]),
    # 4. manifests
    case("manifest_row_with_2_fields", "dedupe", FOLDS, "--out", "{ws}/audit",
         setup=edit_line("folds.csv", 3, "1_2,data/train/1_2.tif,data/train/1_2_mask.tif,1,1,0",
                         "1_2,data/train/1_2.tif"),
         expect=[f"{FOLDS}, line 3", "2 fields", "header has 6"]),
    case("manifest_image_missing", "dedupe", FOLDS, "--out", "{ws}/audit",
         setup=edit_line("folds.csv", 3, "data/train/1_2.tif,", "data/train/nope.tif,"),
         expect=[f"{FOLDS}, line 3", "1_2", "nope.tif"]),
    case("manifest_image_is_a_folder", "dedupe", FOLDS, "--out", "{ws}/audit",
         setup=edit_line("folds.csv", 3, "data/train/1_2.tif,", "data/train,"),
         expect=[f"{FOLDS}, line 3", "1_2", "is a folder"]),
    # image sets
    case("unsafe_file_name", "dedupe", TRAIN, "--out", "{ws}/audit",
         setup=[copy("data/train/1_1.tif", "data/train/a b.tif"),
                copy("data/train/1_1_mask.tif", "data/train/a b_mask.tif")],
         expect=["a b", SAFE_NAME]),
    # 7. label maps
    case("label_map_without_label", "dedupe", "{ws}/gen", "--out", "{ws}/audit",
         setup=palette_set, expect=["{ws}/gen/masks/", LABEL_MAP]),
    case("label_absent", "dedupe", "{ws}/gen", "--out", "{ws}/audit", "--label", "5",
             setup=palette_set, expect=["{ws}/gen", NO_LABEL_5]),
    # 5. options
    case("near_threshold_2", "dedupe", TRAIN, "--out", "{ws}/audit", "--near-threshold", "2",
         expect=["--near-threshold"]),
    case("workers_0", "dedupe", TRAIN, "--out", "{ws}/audit", "--workers", "0",
         expect=["--workers"]),
    case("unknown_option", "dedupe", TRAIN, "--out", "{ws}/audit", "--bogus",
         expect=["--bogus"]),
    case("missing_out", "dedupe", TRAIN, expect=["--out"]),
    case("missing_argument", "dedupe", "--out", "{ws}/audit", expect=["Missing argument"]),
)


@DEDUPE
def test_dedupe_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# split and split --check

ROW3 = "1_2,data/train/1_2.tif,data/train/1_2_mask.tif,1,1,0"


def fold_cell(value: str) -> Setup:
    return edit_line("folds.csv", 3, ROW3, ROW3[: -len("0")] + value)


SPLIT = table(
    # 1. outputs that are inputs
    case("out_is_manifest", "split", FOLDS, "--out", FOLDS, "--folds", "2",
         expect=[FOLDS, IS_INPUT]),
    case("out_is_manifest_via_symlink", "split", FOLDS, "--out", "{ws}/lnk.csv", "--folds",
         "2", "--overwrite", setup=link("lnk.csv", "folds.csv"),
         expect=["{ws}/lnk.csv", IS_INPUT]),
    case("out_is_input_folder", "split", TRAIN, "--out", TRAIN, "--folds", "2",
         expect=[TRAIN, IS_INPUT]),
    case("out_inside_input", "split", TRAIN, "--out", f"{TRAIN}/f.csv", "--folds", "2",
         expect=[f"{TRAIN}/f.csv", INSIDE]),
    case("input_via_symlink_out_inside", "split", "{ws}/lnk", "--out", f"{TRAIN}/f.csv",
         "--folds", "2", setup=link("lnk", "data/train"), expect=[f"{TRAIN}/f.csv", INSIDE]),
    case("out_inside_manifest_images", "split", FOLDS, "--out", f"{TRAIN}/f.csv", "--folds",
         "2", expect=[f"{TRAIN}/f.csv", INSIDE]),
    # 2. existing outputs
    case("out_exists", "split", TRAIN, "--out", FOLDS, "--folds", "2",
         expect=[FOLDS, "output file exists", "--overwrite"]),
    case("out_is_a_folder", "split", TRAIN, "--out", "{ws}/run", "--folds", "2",
         expect=["{ws}/run", "output is a folder"]),
    # 3. values that used to crash
    case("check_fold_beyond_int64", "split", "--check", FOLDS,
         setup=fold_cell("100000000000000000000000"),
         expect=[f"{FOLDS}, line 3", "fold of 1_2", "100000000000000000000000"]),
    case("check_fold_not_integer", "split", "--check", FOLDS, setup=fold_cell("x"),
         expect=[f"{FOLDS}, line 3", "fold of 1_2", "'x'"]),
    case("subject_regex_invalid", "split", TRAIN, "--out", "{ws}/f.csv", "--folds", "2",
         "--subject-regex", "(", expect=["--subject-regex '('", "not a valid regex"]),
    case("subject_regex_without_group", "split", TRAIN, "--out", "{ws}/f.csv", "--folds", "2",
         "--subject-regex", "x", expect=["--subject-regex 'x'", "has no group"]),
    case("check_subject_regex_invalid", "split", "--check", FOLDS, "--subject-regex", "(",
             expect=["--subject-regex '('", "not a valid regex"]),
    # 4. manifests
    case("manifest_row_with_2_fields", "split", FOLDS, "--out", "{ws}/f.csv", "--folds", "2",
         setup=edit_line("folds.csv", 3, ROW3, "1_2,data/train/1_2.tif"),
         expect=[f"{FOLDS}, line 3", "2 fields"]),
    case("manifest_image_missing", "split", FOLDS, "--out", "{ws}/f.csv", "--folds", "2",
         setup=edit_line("folds.csv", 3, "data/train/1_2.tif,", "data/train/nope.tif,"),
         expect=[f"{FOLDS}, line 3", "1_2", "nope.tif"]),
    case("check_mask_missing", "split", "--check", FOLDS,
         setup=edit_line("folds.csv", 3, "data/train/1_2_mask.tif,", "data/train/nope.tif,"),
         expect=[f"{FOLDS}, line 3", "1_2", "nope.tif"]),
    case("manifest_image_is_a_folder", "split", FOLDS, "--out", "{ws}/f.csv", "--folds", "2",
         setup=edit_line("folds.csv", 3, "data/train/1_2.tif,", "data/train,"),
         expect=[f"{FOLDS}, line 3", "1_2", "is a folder"]),
    case("check_unsafe_id", "split", "--check", FOLDS,
         setup=edit_line("folds.csv", 3, "1_2,", "../x,"),
         expect=[f"{FOLDS}, line 3", SAFE_NAME]),
    case("check_header_only", "split", "--check", "{ws}/h.csv",
         setup=write("h.csv", "id,image,mask,subject,has_mask,fold\n"),
         expect=["{ws}/h.csv", "no rows"]),
    case("check_corrupt_mask", "split", "--check", FOLDS,
         setup=corrupt("data/train/1_1_mask.tif"),
         expect=[f"{FOLDS}, line 2", "1_1_mask.tif", "not a readable image"]),
    # 7. label maps
    case("label_map_without_label", "split", "{ws}/gen", "--out", "{ws}/f.csv", "--folds", "2",
         setup=palette_set, expect=["{ws}/gen/masks/", LABEL_MAP]),
    case("label_absent", "split", "{ws}/gen", "--out", "{ws}/f.csv", "--folds", "2", "--label",
         "5", setup=palette_set, expect=["{ws}/gen", NO_LABEL_5]),
    # 5. options
    case("folds_1", "split", TRAIN, "--out", "{ws}/f.csv", "--folds", "1", expect=["--folds"]),
    case("holdout_1_5", "split", TRAIN, "--out", "{ws}/f.csv", "--holdout", "1.5",
         expect=["--holdout"]),
    case("workers_0", "split", TRAIN, "--out", "{ws}/f.csv", "--workers", "0",
         expect=["--workers"]),
    case("unknown_option", "split", TRAIN, "--out", "{ws}/f.csv", "--bogus",
         expect=["--bogus"]),
    case("missing_argument", "split", "--check", expect=["Missing argument"]),
)


@SPLIT
def test_split_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# rle-decode

MASKS_CSV = "{ws}/data/train_masks.csv"
BAD = "{ws}/bad.csv"


def bad_csv(body: str, header: str = "img,pixels\n") -> Setup:
    return write("bad.csv", header + body)


def decode_bad(name: str, body: str, *expect: str, header: str = "img,pixels\n") -> Case:
    return case(name, "rle-decode", BAD, "--out", "{ws}/masks", "--size", "64x48",
                setup=bad_csv(body, header), expect=[BAD, *expect])


RLE_DECODE = table(
    # 1. outputs that are inputs
    case("out_holds_input", "rle-decode", MASKS_CSV, "--out", "{ws}/data", "--size", "64x48",
         expect=["{ws}/data", HOLDS]),
    case("out_is_input", "rle-decode", MASKS_CSV, "--out", MASKS_CSV, "--size", "64x48",
         expect=[MASKS_CSV, IS_INPUT]),
    case("out_is_input_via_symlink", "rle-decode", MASKS_CSV, "--out", "{ws}/l.csv",
         "--size", "64x48", setup=link("l.csv", "data/train_masks.csv"),
         expect=["{ws}/l.csv", IS_INPUT]),
    # 2. existing outputs
    case("out_non_empty_folder", "rle-decode", MASKS_CSV, "--out", "{ws}/probs", "--size",
         "64x48", expect=["{ws}/probs", NOT_EMPTY, "--overwrite"]),
    case("out_is_a_file", "rle-decode", MASKS_CSV, "--out", FOLDS, "--size", "64x48",
         expect=[FOLDS, "not a folder"]),
    # 3. values that used to crash
    decode_bad("length_beyond_int64", f"1,1 {INT64_OVERFLOW}\n", "line 2 (id 1)",
               "past the image end"),
    decode_bad("start_beyond_int64", f"1,{INT64_OVERFLOW} 1\n", "line 2 (id 1)",
               "past the image end"),
    decode_bad("train_format_beyond_int64", f"1,1,1 {INT64_OVERFLOW}\n", "line 2 (id 1_1)",
               "past the image end", header="subject,img,pixels\n"),
    case("size_100000x100000", "rle-decode", MASKS_CSV, "--out", "{ws}/masks", "--size",
         "100000x100000", expect=["--size 100000x100000", "more than"]),
    # 4. accepted silently before
    decode_bad("double_space", "1,1 2  5 1\n", "line 2 (id 1)", "two spaces in a row"),
    decode_bad("leading_space", "1, 1 2\n", "line 2 (id 1)", "space before the first"),
    decode_bad("trailing_space", "1,1 2 \n", "line 2 (id 1)", "after the last token"),
    decode_bad("tab", "1,1\t2\n", "line 2 (id 1)", "not an integer"),
    # the strict reader's other rules
    decode_bad("plus_sign", "1,+1 2\n", "line 2 (id 1)", "not an integer"),
    decode_bad("non_ascii_digit", "1,\u0661 2\n", "line 2 (id 1)", "not an integer"),
    decode_bad("negative_start", "1,-1 2\n", "line 2 (id 1)", "starts at -1"),
    decode_bad("too_few_fields", "1\n", "line 2", "expected 2 fields, found 1"),
    # one mask file on macOS or Windows: a1.png written twice
    decode_bad("ids_differing_in_case", "a1,1 2\nA1,3 2\n", "line 3", "id 'A1' differs from "
               "'a1' (first on line 2) only in case"),
    decode_bad("empty_file", "", "empty CSV", header=""),
    case("not_text", "rle-decode", f"{TRAIN}/1_1.tif", "--out", "{ws}/masks", "--size",
         "64x48", expect=[f"{TRAIN}/1_1.tif", "cannot read CSV"]),
    # 5. options
    case("workers_0", "rle-decode", MASKS_CSV, "--out", "{ws}/masks", "--workers", "0",
         expect=["--workers"]),
    case("unknown_option", "rle-decode", MASKS_CSV, "--out", "{ws}/masks", "--bogus",
         expect=["--bogus"]),
    case("missing_argument", "rle-decode", "--out", "{ws}/masks", expect=["Missing argument"]),
)


@RLE_DECODE
def test_rle_decode_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# rle-encode

PROBS = "{ws}/probs"
SUB = "{ws}/sub.csv"
SAMPLE = "{ws}/data/sample_submission.csv"


def encode(name: str, *options: str, setup: Setup | Sequence[Setup] = (),
           expect: Sequence[str] = (), source: str = PROBS) -> Case:
    return case(name, "rle-encode", source, "--out", SUB, *options, setup=setup,
                expect=expect)


def odd_name(name: str, file_name: str, *expect: str) -> Case:
    return encode(name, source="{ws}/odd", setup=odd_folder(file_name),
                  expect=["{ws}/odd/", *expect])


RLE_ENCODE = table(
    # 1. outputs that are inputs
    case("out_inside_input", "rle-encode", PROBS, "--out", f"{PROBS}/sub.csv",
         expect=[f"{PROBS}/sub.csv", INSIDE]),
    case("out_is_input", "rle-encode", PROBS, "--out", PROBS, expect=[PROBS, IS_INPUT]),
    case("out_inside_input_via_symlink", "rle-encode", PROBS, "--out", "{ws}/lp/sub.csv",
         setup=link("lp", "probs"), expect=["{ws}/lp/sub.csv", INSIDE]),
    case("input_via_symlink_out_inside", "rle-encode", "{ws}/lp", "--out", f"{PROBS}/sub.csv",
         setup=link("lp", "probs"), expect=[f"{PROBS}/sub.csv", INSIDE]),
    case("out_is_csv_input", "rle-encode", MASKS_CSV, "--out", MASKS_CSV, "--overwrite",
         "--size", "64x48", expect=[MASKS_CSV, IS_INPUT]),
    case("out_is_ids_from", "rle-encode", PROBS, "--ids-from", SAMPLE, "--out", SAMPLE,
         "--overwrite", expect=[SAMPLE, IS_INPUT]),
    case("out_is_postprocess", "rle-encode", PROBS, "--postprocess", "{ws}/pp.json", "--out",
         "{ws}/pp.json", "--overwrite",
         setup=write("pp.json", '{"threshold": 0.5, "min_area": 0}'),
         expect=["{ws}/pp.json", IS_INPUT]),
    case("out_inside_manifest_masks", "rle-encode", FOLDS, "--out", f"{TRAIN}/sub.csv",
         expect=[f"{TRAIN}/sub.csv", INSIDE]),
    # 2. existing outputs
    encode("out_exists", setup=write("sub.csv", "keep me"),
           expect=[SUB, "output file exists", "--overwrite"]),
    case("out_is_a_folder", "rle-encode", PROBS, "--out", "{ws}/run",
         expect=["{ws}/run", "output is a folder"]),
    # 3. values that used to crash
    encode("csv_input_beyond_int64", "--size", "64x48", source=BAD,
           setup=bad_csv(f"1,1 {INT64_OVERFLOW}\n"),
           expect=[f"{BAD}, line 2 (id 1)", "past the image end"]),
    encode("size_100000x100000", "--size", "100000x100000", source=MASKS_CSV,
           expect=["--size 100000x100000", "more than"]),
    encode("postprocess_min_area_overflow", "--postprocess", "{ws}/pp.json",
               setup=write("pp.json", '{"threshold": 0.5, "min_area": 1e400}'),
               expect=["{ws}/pp.json", "min_area"]),
    encode("postprocess_threshold_nan", "--postprocess", "{ws}/pp.json",
               setup=write("pp.json", '{"threshold": NaN, "min_area": 0}'),
               expect=["{ws}/pp.json", "threshold"]),
    # 4. accepted silently before
    encode("ids_from_unsafe_id", "--ids-from", BAD, setup=write("bad.csv", "img\n1\n../x\n"),
           expect=[f"{BAD}, line 3", SAFE_NAME]),
    encode("postprocess_not_json", "--postprocess", "{ws}/pp.json",
           setup=write("pp.json", "garbage"), expect=["{ws}/pp.json", "postprocess.json"]),
    encode("manifest_mask_missing", source=FOLDS,
               setup=edit_line("folds.csv", 3, "data/train/1_2_mask.tif,",
                               "data/train/nope.tif,"),
               expect=[f"{FOLDS}, line 3", "nope.tif"]),
    # 6. names that break files
    odd_name("name_with_comma", "a,b.png", "a,b", SAFE_NAME),
    odd_name("name_with_space", "a b.png", "a b", SAFE_NAME),
    odd_name("name_with_quote", "q'uote.png", "q'uote", SAFE_NAME),
    odd_name("name_with_newline", "a\nb.png", SAFE_NAME),
    odd_name("name_starting_with_dash", "-x.png", SAFE_NAME),
    odd_name("name_not_ascii", "\u00e9.png", SAFE_NAME),
    odd_name("name_of_210_chars", "a" * 210 + ".png", "210 characters", "at most 200"),
    # 7. label maps
    encode("label_map_without_label", source="{ws}/gen", setup=palette_set,
           expect=["{ws}/gen/masks/", LABEL_MAP]),
    encode("label_map_masks_folder_without_label", source="{ws}/gen/masks",
           setup=palette_set, expect=["{ws}/gen/masks/", LABEL_MAP]),
    encode("label_absent", "--label", "5", source="{ws}/gen", setup=palette_set,
           expect=["{ws}/gen", NO_LABEL_5]),
    # 5. options
    encode("threshold_1_5", "--threshold", "1.5", expect=["--threshold"]),
    encode("workers_0", "--workers", "0", expect=["--workers"]),
    encode("unknown_option", "--bogus", expect=["--bogus"]),
    case("missing_argument", "rle-encode", "--out", SUB, expect=["Missing argument"]),
)


@RLE_ENCODE
def test_rle_encode_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# score


def score(name: str, *options: str, setup: Setup | Sequence[Setup] = (),
          expect: Sequence[str] = (), pred: str = MASKS_CSV, gt: str = TRAIN) -> Case:
    """``score PRED GT --size 64x48 OPTIONS`` (by default the training CSV against its own
    masks, which scores perfectly)."""
    return case(name, "score", pred, gt, "--size", "64x48", *options, setup=setup,
                expect=expect)


def sweep(name: str, *options: str, expect: Sequence[str] = ()) -> Case:
    """A sweep case; ``--out`` keeps its postprocess.json inside the workspace."""
    return score(name, *options, "--out", "{ws}/s", expect=expect)


SCORE = table(
    # 1. outputs that are inputs
    score("out_is_input", "--out", PROBS, pred=PROBS, gt=PROBS, expect=[PROBS, IS_INPUT]),
    score("out_inside_gt", "--out", f"{TRAIN}/s", expect=[f"{TRAIN}/s", INSIDE]),
    score("out_holds_input", "--out", "{ws}/data", "--overwrite", expect=["{ws}/data", HOLDS]),
    score("out_is_csv_input", "--out", MASKS_CSV, expect=[MASKS_CSV, IS_INPUT]),
    score("out_inside_input_via_symlink", "--out", "{ws}/lnk/s",
          setup=link("lnk", "data/train"), expect=["{ws}/lnk/s", INSIDE]),
    score("out_inside_manifest_masks", "--out", f"{TRAIN}/s", gt=FOLDS,
          expect=[f"{TRAIN}/s", INSIDE]),
    score("overlays_is_input", "--overlays", TRAIN, "--images", TRAIN,
          expect=[TRAIN, IS_INPUT]),
    score("overlays_inside_images", "--overlays", "{ws}/data/test/ov", "--images",
          "{ws}/data/test", expect=["{ws}/data/test/ov", INSIDE]),
    score("postprocess_out_is_input", "--sweep-threshold", "0.3:0.7:0.1", "--postprocess-out",
          MASKS_CSV, "--overwrite", expect=[MASKS_CSV, IS_INPUT]),
    score("postprocess_out_is_postprocess", "--postprocess", "{ws}/pp.json",
          "--sweep-threshold", "0.3:0.7:0.1", "--postprocess-out", "{ws}/pp.json",
          "--overwrite", pred=PROBS, gt="{ws}/data/test",
          setup=write("pp.json", '{"threshold": 0.5, "min_area": 0}'),
          expect=["{ws}/pp.json", IS_INPUT]),
    # 2. existing outputs
    score("out_non_empty_folder", "--out", "{ws}/s", setup=non_empty_folder("s"),
          expect=["{ws}/s", NOT_EMPTY, "--overwrite"]),
    score("out_is_a_file", "--out", FOLDS, expect=[FOLDS, "not a folder"]),
    score("postprocess_out_exists", "--sweep-threshold", "0.3:0.7:0.1", "--out", "{ws}/s",
          "--postprocess-out", "{ws}/pp.json", setup=write("pp.json", "{}"),
          expect=["{ws}/pp.json", "output file exists"]),
    score("overlays_non_empty_folder", "--overlays", "{ws}/run", "--images", TRAIN,
          expect=["{ws}/run", NOT_EMPTY]),
    # 3. values that used to crash
    score("pred_csv_beyond_int64", pred=BAD,
          setup=bad_csv(f"1_1,1 {INT64_OVERFLOW}\n"),
          expect=[f"{BAD}, line 2 (id 1_1)", "past the image end"]),
    score("gt_csv_beyond_int64", pred=TRAIN, gt=BAD,
          setup=bad_csv(f"1,1,1 {INT64_OVERFLOW}\n", header="subject,img,pixels\n"),
          expect=[f"{BAD}, line 2 (id 1_1)", "past the image end"]),
    case("size_100000x100000", "score", MASKS_CSV, TRAIN, "--size", "100000x100000",
         expect=["--size 100000x100000", "more than"]),
    sweep("sweep_threshold_nan", "--sweep-threshold", "nan:0.7:0.1",
          expect=["--sweep-threshold 'nan:0.7:0.1'", "finite"]),
    sweep("sweep_threshold_step_0", "--sweep-threshold", "0.3:0.7:0",
          expect=["--sweep-threshold '0.3:0.7:0'", "STEP > 0"]),
    sweep("sweep_threshold_above_1", "--sweep-threshold", "0.3:1.7:0.1",
          expect=["outside [0, 1]"]),
    sweep("sweep_threshold_too_many", "--sweep-threshold", "0:1:0.0000001",
          expect=["--sweep-threshold '0:1:0.0000001'", "at most 10000"]),
    sweep("sweep_min_area_negative", "--sweep-min-area", "-5:10:5",
          expect=["--sweep-min-area '-5:10:5'", ">= 0"]),
    sweep("sweep_min_area_huge", "--sweep-min-area", f"0:{INT64_OVERFLOW}:1",
          expect=[f"--sweep-min-area '0:{INT64_OVERFLOW}:1'", "at most 10000"]),
    score("subject_regex_invalid", "--subject-regex", "(",
          expect=["--subject-regex '('", "not a valid regex"]),
    score("subject_regex_without_group", "--subject-regex", "x",
          expect=["--subject-regex 'x'", "has no group"]),
    score("postprocess_min_area_overflow", "--postprocess", "{ws}/pp.json", pred=PROBS,
              gt="{ws}/data/test",
              setup=write("pp.json", '{"threshold": 0.5, "min_area": 1e400}'),
              expect=["{ws}/pp.json", "min_area"]),
    # 4. accepted silently before
    score("pred_csv_double_space", pred=BAD, setup=bad_csv("1_1,1 2  5 1\n"),
          expect=[f"{BAD}, line 2 (id 1_1)", "two spaces"]),
    score("header_only_csvs", pred="{ws}/p.csv", gt="{ws}/g.csv",
          setup=[write("p.csv", "img,pixels\n"), write("g.csv", "img,pixels\n")],
          expect=["{ws}/g.csv", "no ground-truth images"]),
    score("manifest_gt_row_with_2_fields", gt=FOLDS,
          setup=edit_line("folds.csv", 3, ROW3, "1_2,data/train/1_2.tif"),
          expect=[f"{FOLDS}, line 3", "2 fields"]),
    score("manifest_gt_mask_missing", gt=FOLDS,
              setup=edit_line("folds.csv", 3, "data/train/1_2_mask.tif,",
                              "data/train/nope.tif,"),
              expect=[f"{FOLDS}, line 3", "nope.tif"]),
    score("manifest_gt_mask_is_a_folder", gt=FOLDS,
              setup=edit_line("folds.csv", 3, "data/train/1_2_mask.tif,", "data/train,"),
              expect=[f"{FOLDS}, line 3", "is a folder"]),
    score("unsafe_pred_name", pred="{ws}/odd", gt="{ws}/odd", setup=odd_folder("a b.png"),
          expect=["{ws}/odd/a b.png", SAFE_NAME]),
    # 7. label maps (ground truth and predictions the palette set)
    score("label_map_without_label", pred="{ws}/gen", gt="{ws}/gen", setup=palette_set,
          expect=["{ws}/gen/masks/", LABEL_MAP]),
    score("label_absent", "--label", "5", pred="{ws}/gen", gt="{ws}/gen", setup=palette_set,
          expect=["{ws}/gen", NO_LABEL_5]),
    # 8. failed runs leave nothing
    score("overlays_one_image_missing", "--out", "{ws}/s", "--overlays", "{ws}/ov",
          "--images", "{ws}/imgs", "--sweep-threshold", "0.3:0.7:0.1",
          setup=images_without("2_5"), expect=["{ws}/imgs", "no image for 1 scored ids",
                                              "2_5"]),
    score("overlays_corrupt_image", "--out", "{ws}/s", "--overlays", "{ws}/ov", "--images",
          TRAIN, setup=corrupt("data/train/2_1.tif"),
          expect=[f"{TRAIN}/2_1.tif", "not a readable image"]),
    # 5. options
    score("threshold_1_5", "--threshold", "1.5", expect=["--threshold"]),
    score("workers_0", "--workers", "0", expect=["--workers"]),
    score("unknown_option", "--bogus", expect=["--bogus"]),
    case("missing_argument", "score", MASKS_CSV, expect=["Missing argument"]),
)


@SCORE
def test_score_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# label maps: --label N selects exactly class N


def column_major_rle(mask: np.ndarray) -> str:
    """Kaggle RLE of a bool mask (column-major, 1-based), written independently of the
    library."""
    flat = np.concatenate([[0], mask.ravel(order="F").astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends, strict=True))


def class_pixels(value: int) -> dict[str, int]:
    return {sample_id: int((labels == value).sum())
            for sample_id, labels in palette_labels().items()}


def test_palette_set_has_both_classes_and_empty_masks() -> None:
    """The positive checks below mean something only if the classes differ per image."""
    nerve, vessel = class_pixels(1), class_pixels(2)
    assert nerve != vessel
    assert 0 in nerve.values() and 0 in vessel.values()
    assert all(n + v > 0 for n, v in zip(nerve.values(), vessel.values(), strict=True))


@pytest.mark.parametrize("label", [1, 2])
def test_label_selects_class_in_score(label: int, tmp_path: Path) -> None:
    gen = make_palette_set(tmp_path / "gen")
    out = tmp_path / "s"
    result = run_cli("score", gen, gen, "--label", str(label), "--out", out, "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    with (out / "per_image.csv").open(newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    expected = class_pixels(label)
    assert {i: int(r["gt_area"]) for i, r in rows.items()} == expected
    assert {i: int(r["pred_area"]) for i, r in rows.items()} == expected
    assert all(float(r["dice"]) == 1.0 for r in rows.values())


@pytest.mark.parametrize("label", [1, 2])
def test_label_selects_class_in_rle_encode(label: int, tmp_path: Path) -> None:
    gen = make_palette_set(tmp_path / "gen")
    out = tmp_path / "sub.csv"
    result = run_cli("rle-encode", gen, "--label", str(label), "--out", out)
    assert result.exit_code == 0, (result.stderr, result.exception)
    expected = "img,pixels\n" + "".join(
        f"{sample_id},{column_major_rle(labels == label)}\n"
        for sample_id, labels in palette_labels().items())
    assert out.read_text() == expected


@pytest.mark.parametrize("label", [1, 2])
def test_label_selects_class_in_split(label: int, tmp_path: Path) -> None:
    gen = make_palette_set(tmp_path / "gen")
    out = tmp_path / "folds.csv"
    result = run_cli("split", gen, "--out", out, "--folds", "2", "--label", str(label),
                     "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pixels = class_pixels(label)
    assert {r["id"]: r["has_mask"] for r in rows} == {
        i: str(int(n > 0)) for i, n in pixels.items()}
    report = json.loads(result.stdout)
    for fold in report["per_fold"]:
        areas = [pixels[r["id"]] for r in rows if r["fold"] == str(fold["fold"])]
        positive = [a for a in areas if a > 0]
        assert fold["images"] == len(areas)
        assert fold["positive_pct"] == pytest.approx(100 * len(positive) / len(areas))
        assert fold["mean_mask_area"] == pytest.approx(np.mean(positive) if positive else 0)


@pytest.mark.parametrize("label", [1, 2])
def test_label_selects_class_in_dedupe(label: int, tmp_path: Path) -> None:
    gen = make_palette_set(tmp_path / "gen")
    out = tmp_path / "audit"
    result = run_cli("dedupe", gen, "--out", out, "--label", str(label), "--policy", "report")
    assert result.exit_code == 0, (result.stderr, result.exception)
    with (out / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["id"]: r["has_mask"] for r in rows} == {
        i: str(int(n > 0)) for i, n in class_pixels(label).items()}


# --------------------------------------------------------------------------------------------
# a corrupt TIFF, in a real process: one line, nothing from OpenCV


@pytest.mark.parametrize("command, damaged", [
    (["dedupe", "data/train", "--out", "audit"], "data/train/1_1.tif"),
    (["rle-encode", "data/train", "--out", "sub.csv"], "data/train/1_1_mask.tif"),
], ids=["dedupe-image", "rle-encode-mask"])
def test_corrupt_tiff_gives_one_line_in_a_subprocess(command: list[str], damaged: str,
                                                     workspace: Path) -> None:
    (workspace / damaged).write_bytes(b"II*\x00garbage")
    before = snapshot(workspace)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    result = subprocess.run([sys.executable, "-m", "nerveseg_cli", *command], cwd=workspace,
                            capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert damaged in lines[0] and "not a readable image" in lines[0], lines[0]
    assert "[ERROR" not in result.stderr and "TIFF" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(workspace) == before
