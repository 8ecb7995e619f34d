"""Several classes through the command line: the whole chain on ``synth --classes 3``, the
binary commands on one class folder, and hostile multi-class input.

One module-scoped fixture runs the chain once, every step through ``run_cli``: synth (palette
label maps, long-form CSVs) -> dedupe -> split (per-class columns) -> train (two tiny runs,
one per fold) -> predict (``OUT/classes.json``, ``OUT/<class>/ID.png``, label-map ``--masks``)
-> ensemble of the two prediction folders -> crf (one dense CRF with three labels) -> score
(per-class figures, confusion.csv) -> rle-encode (long and joined forms, a per-class
postprocess.json) -> rle-decode -> score of the decoded folder, which must equal the score of
the encoded maps under the same thresholds.

The hostile cases (``tests.hostile``: exit 2, one ``error:`` line naming the file and row,
nothing modified or left behind) copy a small workspace made from the chain's outputs:
``data/`` (synth --classes 3), ``folds.csv``, ``run/`` (3 classes), ``binrun/`` (binary,
``--label 1``) and ``probs/`` (run/'s class folders for ``data/train``).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

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

NAMES = ("background", "nerve", "vessel")
CLASSES = ",".join(NAMES)
SIZE = "64x48"
WIDTH, HEIGHT = 64, 48
TRAIN_IDS = [f"{s}_{i}" for s in (1, 2, 3) for i in (1, 2, 3)]
CPU = ("--device", "cpu", "--workers", "1")
TINY = ("--arch", "unet-plain", "--width", "2", "--epochs", "1", "--batch-size", "8")


def ok(*args: str | Path) -> CliResult:
    result = run_cli(*args)
    assert result.exit_code == 0, (args, result.exit_code, result.stdout, result.stderr,
                                   result.exception)
    return result


def ok_json(*args: str | Path) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def pixels(path: Path) -> np.ndarray:
    """A PNG's values as Pillow reads them (a palette PNG: its indices)."""
    with Image.open(path) as image:
        return np.array(image)


def class_values(folder: Path, sample_id: str) -> np.ndarray:
    """(2, H, W) uint8: the nerve and vessel maps of one id in a folder of several classes."""
    return np.stack([pixels(folder / name / f"{sample_id}.png") for name in NAMES[1:]])


def by_hand_label_map(values: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """The label map of per-class maps: a class is kept where its value exceeds its level;
    a pixel takes the kept class of the highest value (ties: the first), else 0."""
    kept = np.stack([values[k] > levels[k] for k in range(len(levels))])
    best = np.where(kept, values.astype(np.int16), -1).argmax(axis=0)
    return np.where(kept.any(axis=0), best + 1, 0)


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


# --------------------------------------------------------------------------------------------
# the chain, built once


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multiclass")
    data, train_dir = root / "data", root / "data" / "train"
    got: dict[str, Any] = {"root": root, "data": data, "train": train_dir}
    got["synth"] = ok_json("synth", data, "--classes", "3", "--subjects", "3",
                           "--per-subject", "3", "--test", "2", "--size", SIZE, "--seed", "5",
                           "--workers", "1")
    got["dedupe"] = ok_json("dedupe", train_dir, "--classes", "3", "--out", root / "dd",
                            "--workers", "1")
    got["split_table"] = ok("split", train_dir, "--classes", "3", "--folds", "3",
                            "--out", root / "folds.csv", "--workers", "1").stdout
    got["split"] = ok_json("split", train_dir, "--classes", "3", "--folds", "3",
                           "--out", root / "folds.csv", "--overwrite", "--workers", "1")
    for fold in (0, 1):
        ok("train", root / "folds.csv", "--classes", CLASSES, "--fold", str(fold), *TINY,
           "--seed", str(fold), "--out", root / f"run{fold}", *CPU)
    ok("predict", root / "run0", train_dir, "--out", root / "p0", "--masks", root / "m0", *CPU)
    ok("predict", root / "run1", train_dir, "--out", root / "p1", *CPU)
    ok("ensemble", root / "p0", root / "p1", "--out", root / "ens", "--workers", "1")
    ok("crf", root / "ens", train_dir, "--out", root / "crf", "--workers", "1")
    got["score"] = ok_json("score", root / "crf", train_dir, "--out", root / "score",
                           "--workers", "1")["summary"]

    # a threshold per class that splits each class's values of crf/ (an untrained model's
    # maps are nearly flat, so 0.5 would leave every mask empty): level = a value seen
    crf_values = np.stack([class_values(root / "crf", i) for i in TRAIN_IDS], axis=1)
    levels = []
    for k in range(2):
        level = int(np.percentile(crf_values[k], 60))
        levels.append(level if (crf_values[k] > level).any() else level - 1)
    got["levels"] = levels
    post = {name: {"threshold": round((level + 0.5) / 255, 6), "min_area": 0}
            for name, level in zip(NAMES[1:], levels, strict=True)}
    (root / "pp.json").write_text(json.dumps({"classes": post}))
    got["encoded_score"] = ok_json("score", root / "crf", train_dir, "--postprocess",
                                   root / "pp.json", "--workers", "1")["summary"]
    ok("rle-encode", root / "crf", "--out", root / "long.csv", "--postprocess",
       root / "pp.json", "--workers", "1")
    ok("rle-encode", root / "crf", "--out", root / "joined.csv", "--format", "joined",
       "--postprocess", root / "pp.json", "--workers", "1")
    ok("rle-decode", root / "long.csv", "--classes", CLASSES, "--size", SIZE,
       "--out", root / "dec", "--workers", "1")
    ok("rle-decode", root / "joined.csv", "--size", SIZE, "--out", root / "decj",
       "--workers", "1")
    got["decoded_score"] = ok_json("score", root / "dec", train_dir, "--workers",
                                   "1")["summary"]
    got["decoded_joined_score"] = ok_json("score", root / "decj", train_dir, "--workers",
                                          "1")["summary"]
    return got


def truth(chain: dict[str, Any], sample_id: str) -> np.ndarray:
    return pixels(chain["train"] / f"{sample_id}_mask.png")


def test_synth_writes_palette_label_maps_and_long_csvs(chain: dict[str, Any]) -> None:
    train_dir = chain["train"]
    assert sorted(p.name for p in train_dir.glob("*_mask.png")) == \
        sorted(f"{i}_mask.png" for i in TRAIN_IDS)
    seen = set()
    for sample_id in TRAIN_IDS:
        with Image.open(train_dir / f"{sample_id}_mask.png") as mask:
            assert mask.mode == "P"
        seen |= set(np.unique(truth(chain, sample_id)).tolist())
    assert seen == {0, 1, 2}
    rows = read_rows(chain["data"] / "train_masks.csv")
    assert rows[0] == ["ImageId", "ClassId", "EncodedPixels"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(i, k) for i in TRAIN_IDS for k in "12"]
    sample = read_rows(chain["data"] / "sample_submission.csv")
    assert sample[0] == ["ImageId", "ClassId", "EncodedPixels"] and len(sample) == 1 + 2 * 2


def test_dedupe_counts_each_class(chain: dict[str, Any]) -> None:
    holding = {f"class{k}": sum(1 for i in TRAIN_IDS if (truth(chain, i) == k).any())
               for k in (1, 2)}
    assert chain["dedupe"]["with_each_class"] == holding
    assert chain["dedupe"]["kept"] == len(TRAIN_IDS)
    rows = read_rows(chain["root"] / "dd" / "manifest.csv")
    assert [r[0] for r in rows[1:]] == TRAIN_IDS


def test_dedupe_table_says_any_class_not_a_nerve(chain: dict[str, Any],
                                                 tmp_path: Path) -> None:
    table = ok("dedupe", chain["train"], "--classes", "3", "--out", tmp_path / "dd",
               "--workers", "1").stdout
    assert "with any class" in table and "with a nerve" not in table
    assert "with each class" in table


def test_split_reports_each_class(chain: dict[str, Any]) -> None:
    assert "% class1" in chain["split_table"] and "% class2" in chain["split_table"]
    assert "any class %" in chain["split_table"] and "positive %" not in chain["split_table"]
    rows = read_rows(chain["root"] / "folds.csv")
    header = rows[0]
    folds = {r[0]: int(r[header.index("fold")]) for r in rows[1:]}
    assert sorted(folds) == sorted(TRAIN_IDS) and set(folds.values()) == {0, 1, 2}
    for fold in chain["split"]["per_fold"]:
        members = [i for i, f in folds.items() if f == fold["fold"]]
        expected = {f"class{k}": round(100 * sum((truth(chain, i) == k).any()
                                                 for i in members) / len(members), 2)
                    for k in (1, 2)}
        assert fold["class_positive_pct"] == expected, fold
    # has_mask: any class present
    for row in rows[1:]:
        assert row[header.index("has_mask")] == str(int(truth(chain, row[0]).any()))


def test_train_records_classes_and_per_class_dice(chain: dict[str, Any]) -> None:
    for fold in (0, 1):
        run = chain["root"] / f"run{fold}"
        config = json.loads((run / "config.json").read_text())
        assert config["classes"] == list(NAMES)
        assert config["model"]["classes"] == 3
        rows = read_rows(run / "metrics.csv")
        header = rows[0]
        assert "dice_nerve" in header and "dice_vessel" in header, header
        assert len(rows) == 2  # one epoch
        for column in ("dice_nerve", "dice_vessel"):
            assert 0.0 <= float(rows[1][header.index(column)]) <= 1.0


def test_per_class_decoders_train_and_predict(chain: dict[str, Any], tmp_path: Path) -> None:
    """A unet of several classes gets a decoder per class by default, recorded in its run."""
    run, probs = tmp_path / "run", tmp_path / "probs"
    ok("train", chain["root"] / "folds.csv", "--classes", CLASSES, "--arch", "unet",
       "--size", "64x64", "--epochs", "1", "--batch-size", "8", "--out", run, *CPU)
    assert json.loads((run / "config.json").read_text())["model"]["extra"] == \
        {"decoders": "per-class"}
    ok("predict", run, chain["data"] / "test", "--out", probs, *CPU)
    for name in NAMES[1:]:
        assert len(list((probs / name).glob("*.png"))) == 2


def test_predict_writes_a_folder_per_class(chain: dict[str, Any]) -> None:
    out = chain["root"] / "p0"
    assert json.loads((out / "classes.json").read_text()) == {"classes": list(NAMES)}
    record = json.loads((out / "prediction.json").read_text())
    assert record["command"] == "predict" and record["classes"] == list(NAMES)
    for name in NAMES[1:]:
        record = json.loads((out / name / "prediction.json").read_text())
        assert (record["class"], record["classes"]) == (name, list(NAMES))
        maps = sorted(p.stem for p in (out / name).glob("*.png"))
        assert maps == sorted(TRAIN_IDS)
        with Image.open(out / name / "1_1.png") as image:
            assert image.mode == "L" and image.size == (WIDTH, HEIGHT)
    assert not (out / "background").exists()
    # softmax: the foreground classes never sum past 1 (rounding aside)
    for sample_id in TRAIN_IDS:
        assert class_values(out, sample_id).astype(int).sum(axis=0).max() <= 256


def test_predict_masks_are_label_maps_of_the_maps(chain: dict[str, Any]) -> None:
    masks = chain["root"] / "m0"
    assert sorted(p.stem for p in masks.glob("*.png")) == sorted(TRAIN_IDS)
    for sample_id in TRAIN_IDS:
        with Image.open(masks / f"{sample_id}.png") as image:
            assert image.mode == "P" and image.size == (WIDTH, HEIGHT)
        labels = pixels(masks / f"{sample_id}.png")
        assert labels.min() >= 0 and labels.max() <= 2
        expected = by_hand_label_map(class_values(chain["root"] / "p0", sample_id), [127, 127])
        np.testing.assert_array_equal(labels, expected)


def test_predict_masks_take_a_postprocess_json_per_class(chain: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """score --sweep-* writes a postprocess.json per class; predict --masks applies it."""
    root = chain["root"]
    ok("predict", root / "run0", chain["train"], "--out", tmp_path / "p", "--masks",
       tmp_path / "m", "--postprocess", root / "pp.json", *CPU)
    levels = chain["levels"]
    for sample_id in TRAIN_IDS:
        expected = by_hand_label_map(class_values(tmp_path / "p", sample_id), levels)
        np.testing.assert_array_equal(pixels(tmp_path / "m" / f"{sample_id}.png"), expected)
    record = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert set(record["options"]["postprocess"]) == {"nerve", "vessel"}


def test_ensemble_merges_each_class_alone(chain: dict[str, Any]) -> None:
    root = chain["root"]
    assert json.loads((root / "ens" / "classes.json").read_text())["classes"] == list(NAMES)
    record = json.loads((root / "ens" / "prediction.json").read_text())
    assert record["classes"] == list(NAMES)
    upstream = record["upstream"]
    assert upstream == [json.loads((root / member / "prediction.json").read_text())
                        for member in ("p0", "p1")]
    for sample_id in TRAIN_IDS:
        mean = (class_values(root / "p0", sample_id).astype(float)
                + class_values(root / "p1", sample_id)) / 2
        merged = class_values(root / "ens", sample_id)
        assert np.abs(merged - mean).max() <= 0.5 + 1e-9


def test_crf_keeps_the_class_folders(chain: dict[str, Any]) -> None:
    out = chain["root"] / "crf"
    assert json.loads((out / "classes.json").read_text())["classes"] == list(NAMES)
    record = json.loads((out / "prediction.json").read_text())
    assert record["command"] == "crf" and record["classes"] == list(NAMES)
    assert record["complete"]
    # provenance chains to the input's own prediction.json, not to one of its class folders
    upstream = json.loads((Path(record["inputs"]["probabilities"]) / "prediction.json")
                          .read_text())
    assert record["upstream"] == upstream and "class" not in record["upstream"]
    for name in NAMES[1:]:
        assert sorted(p.stem for p in (out / name).glob("*.png")) == sorted(TRAIN_IDS)
        assert json.loads((out / name / "prediction.json").read_text())["classes"] == list(NAMES)
    for sample_id in TRAIN_IDS:
        values = class_values(out, sample_id)
        assert values.shape == (2, HEIGHT, WIDTH)
        # one CRF over three labels: the foreground probabilities never sum past 1
        assert values.astype(int).sum(axis=0).max() <= 256


def test_score_reports_each_class_and_the_confusion(chain: dict[str, Any]) -> None:
    summary, out = chain["score"], chain["root"] / "score"
    assert summary["images"] == len(TRAIN_IDS) and summary["classes"] == list(NAMES)
    assert set(summary["by_class"]) == {"nerve", "vessel"}
    dice = [summary["by_class"][name]["dice"] for name in NAMES[1:]]
    assert summary["dice"] == pytest.approx(sum(dice) / 2)
    assert sorted(p.name for p in out.iterdir()) == \
        ["classes.csv", "confusion.csv", "per_image.csv", "summary.json"]
    confusion = read_rows(out / "confusion.csv")
    assert confusion[0] == ["truth\\predicted", *NAMES]
    matrix = np.array([[int(v) for v in row[1:]] for row in confusion[1:]])
    assert matrix.shape == (3, 3) and matrix.sum() == len(TRAIN_IDS) * WIDTH * HEIGHT
    assert matrix.tolist() == summary["confusion"]
    # the truth rows count the label maps' pixels
    counts = sum(np.bincount(truth(chain, i).ravel(), minlength=3) for i in TRAIN_IDS)
    assert matrix.sum(axis=1).tolist() == counts.tolist()
    per_image = read_rows(out / "per_image.csv")
    assert "class" in per_image[0] and len(per_image) == 1 + 2 * len(TRAIN_IDS)


def test_rle_encode_writes_the_long_and_joined_forms(chain: dict[str, Any]) -> None:
    root = chain["root"]
    long_rows = read_rows(root / "long.csv")
    assert long_rows[0] == ["ImageId", "ClassId", "EncodedPixels"]
    assert [(r[0], r[1]) for r in long_rows[1:]] == [(i, k) for i in TRAIN_IDS for k in "12"]
    joined = read_rows(root / "joined.csv")
    assert joined[0] == ["Image_Label", "EncodedPixels"]
    assert [r[0] for r in joined[1:]] == [f"{i}_{n}" for i in TRAIN_IDS for n in NAMES[1:]]
    assert [r[2] for r in long_rows[1:]] == [r[1] for r in joined[1:]]
    assert any(r[2] for r in long_rows[1:]), "every mask empty: the round trip proves little"


def test_rle_round_trip_scores_as_the_encoded_maps(chain: dict[str, Any]) -> None:
    root = chain["root"]
    assert json.loads((root / "dec" / "classes.json").read_text())["classes"] == list(NAMES)
    assert json.loads((root / "decj" / "classes.json").read_text())["classes"] == list(NAMES)
    encoded = chain["encoded_score"]
    for decoded in (chain["decoded_score"], chain["decoded_joined_score"]):
        assert decoded["classes"] == encoded["classes"]
        assert decoded["confusion"] == encoded["confusion"]
        assert decoded["dice"] == pytest.approx(encoded["dice"])
        assert decoded["mean_iou"] == pytest.approx(encoded["mean_iou"], nan_ok=True)
        for name in NAMES[1:]:
            for key in ("dice", "iou", "dice_on_positive", "presence_tp", "presence_fp",
                        "presence_fn", "presence_tn"):
                assert decoded["by_class"][name][key] == \
                    pytest.approx(encoded["by_class"][name][key], nan_ok=True), (name, key)
    # decoded masks are the thresholded maps, pixel for pixel
    for sample_id in TRAIN_IDS:
        values = class_values(root / "crf", sample_id)
        for k, name in enumerate(NAMES[1:]):
            np.testing.assert_array_equal(pixels(root / "dec" / name / f"{sample_id}.png"),
                                          (values[k] > chain["levels"][k]) * 255)


def test_rle_decode_label_maps(chain: dict[str, Any], tmp_path: Path) -> None:
    ok("rle-decode", chain["root"] / "long.csv", "--classes", CLASSES, "--label-maps",
       "--size", SIZE, "--out", tmp_path / "lm", "--workers", "1")
    assert not (tmp_path / "lm" / "classes.json").exists()
    for sample_id in TRAIN_IDS:
        labels = pixels(tmp_path / "lm" / f"{sample_id}.png")
        nerve = pixels(chain["root"] / "dec" / "nerve" / f"{sample_id}.png") > 0
        vessel = pixels(chain["root"] / "dec" / "vessel" / f"{sample_id}.png") > 0
        # where the classes overlap, the lower index wins
        np.testing.assert_array_equal(labels, np.where(nerve, 1, np.where(vessel, 2, 0)))


# --------------------------------------------------------------------------------------------
# the binary commands on one class folder


def test_binary_commands_take_one_class_folder(chain: dict[str, Any], tmp_path: Path) -> None:
    root, train_dir = chain["root"], chain["train"]
    for label, name in ((1, "nerve"), (2, "vessel")):
        binary = ok_json("score", root / "crf" / name, train_dir, "--label", str(label),
                         "--workers", "1")["summary"]
        assert binary["dice"] == pytest.approx(chain["score"]["by_class"][name]["dice"])
        assert binary["images"] == len(TRAIN_IDS)
    ok("rle-encode", root / "crf" / "nerve", "--out", tmp_path / "nerve.csv",
       "--workers", "1")
    rows = read_rows(tmp_path / "nerve.csv")
    assert rows[0] == ["img", "pixels"] and [r[0] for r in rows[1:]] == TRAIN_IDS
    ok("rle-encode", root / "dec" / "vessel", "--out", tmp_path / "vessel.csv",
       "--workers", "1")
    long_vessel = [r[2] for r in read_rows(root / "long.csv")[1:] if r[1] == "2"]
    assert [r[1] for r in read_rows(tmp_path / "vessel.csv")[1:]] == long_vessel
    ok("ensemble", root / "p0" / "nerve", root / "p1" / "nerve", "--out", tmp_path / "ens",
       "--workers", "1")
    for sample_id in TRAIN_IDS:
        np.testing.assert_array_equal(pixels(tmp_path / "ens" / f"{sample_id}.png"),
                                      pixels(root / "ens" / "nerve" / f"{sample_id}.png"))
    ok("crf", root / "ens" / "nerve", train_dir, "--out", tmp_path / "crf", "--workers", "1")
    assert sorted(p.stem for p in (tmp_path / "crf").glob("*.png")) == sorted(TRAIN_IDS)
    assert not (tmp_path / "crf" / "classes.json").exists()


# --------------------------------------------------------------------------------------------
# hostile input


@pytest.fixture(scope="module")
def mc_base(chain: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the cases start from: ``data/``, ``folds.csv``, ``run/`` (3 classes), ``binrun/``
    (binary, --label 1) and ``probs/`` (run/'s maps of data/train). Never changed."""
    root = chain["root"]
    base = tmp_path_factory.mktemp("mchostile") / "base"
    shutil.copytree(chain["data"], base / "data")
    shutil.copy(root / "folds.csv", base / "folds.csv")  # its paths are relative
    shutil.copytree(root / "run0", base / "run")
    shutil.copytree(root / "p0", base / "probs")
    ok("train", base / "folds.csv", "--label", "1", *TINY, "--out", base / "binrun", *CPU)
    return base


@pytest.fixture
def mc_workspace(mc_base: Path, tmp_path: Path) -> Path:
    return make_workspace(mc_base, tmp_path / "ws")


def label_value(rel: str, value: int) -> Setup:
    """Set one pixel of a palette label map to ``value`` (the palette kept)."""
    def step(ws: Path) -> None:
        path = ws / rel
        with Image.open(path) as image:
            palette = image.getpalette()
            labels = np.array(image)
        labels[0, 0] = value
        out = Image.fromarray(labels)
        out.putpalette(palette)  # an "L" image with a palette becomes "P"
        assert out.mode == "P"
        out.save(path)
    return step


def other_classes(rel: str, names: Sequence[str]) -> Setup:
    """A folder of several classes renamed consistently: classes.json, its class folders and
    every prediction.json's class list (a half-renamed folder is refused on its own)."""
    def step(ws: Path) -> None:
        folder = ws / rel
        old = json.loads((folder / "classes.json").read_text())["classes"]
        for before, after in zip(old[1:], names[1:], strict=True):
            if before != after:
                (folder / before).rename(folder / after)
        (folder / "classes.json").write_text(json.dumps({"classes": list(names)}))
        for record in [folder / "prediction.json",
                       *(folder / name / "prediction.json" for name in names[1:])]:
            if record.is_file():
                data = json.loads(record.read_text())
                data["classes"] = list(names)
                if "class" in data:
                    data["class"] = record.parent.name
                record.write_text(json.dumps(data))
    return step


def run_with_classes(rel: str, names: Sequence[str]) -> Setup:
    """A copy of run/ whose config.json names other classes (as many)."""
    def step(ws: Path) -> None:
        shutil.copytree(ws / "run", ws / rel)
        config = json.loads((ws / rel / "config.json").read_text())
        config["classes"] = list(names)
        config["training"]["classes"] = ",".join(names)  # its own record agrees
        (ws / rel / "config.json").write_text(json.dumps(config))
    return step


def resized(rel: str) -> Setup:
    def step(ws: Path) -> None:
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(ws / rel)
    return step


PROBS, TRUTH, FOLDS = "{ws}/probs", "{ws}/data/train", "{ws}/folds.csv"
JOINED = "Image_Label,EncodedPixels\n1_1_nerve,1 3\n1_1_artery,\n"
LONG_BEYOND = "ImageId,ClassId,EncodedPixels\n1_1,1,1 3\n1_1,3,\n"
NERVE_ONLY_PP = '{"classes": {"nerve": {"threshold": 0.4, "min_area": 0}}}'
ARTERY = ("background", "nerve", "artery")
BEYOND = ", 3 go beyond the 3 classes (0 to 2)"
MISSING_MAP = [PROBS + ":", "not in every class folder", "first: 1_2", "missing from vessel/"]
NO_FOLDER = [PROBS + ":", "class folder vessel/ missing"]
BAD_JSON = "{ws}/probs/classes.json"


def train_args(*extra: str) -> list[str]:
    return ["train", FOLDS, *TINY, "--out", "{ws}/r", *CPU, *extra]


MISMATCH = cases(
    case("score_classes_other_names", "score", PROBS, TRUTH, "--classes",
         "background,nerve,artery",
         expect=[PROBS, "has classes background,nerve,vessel",
                 "--classes has background,nerve,artery"]),
    case("score_classes_other_count", "score", PROBS, TRUTH, "--classes", "2",
         expect=[PROBS, "has classes background,nerve,vessel", "background,class1"]),
    case("rle_encode_classes_other_names", "rle-encode", PROBS, "--out", "{ws}/o.csv",
         "--classes", "background,nerve,artery",
         expect=[PROBS, "--classes has background,nerve,artery"]),
    case("score_truth_folder_other_classes", "score", PROBS, "{ws}/probs2",
         setup=[copy_tree("probs", "probs2"), other_classes("probs2", ARTERY)],
         expect=["{ws}/probs2 has classes background,nerve,artery",
                 f"but {PROBS} has background,nerve,vessel"]),
    case("ensemble_other_classes_json", "ensemble", PROBS, "{ws}/probs2", "--out", "{ws}/e",
         "--workers", "1",
         setup=[copy_tree("probs", "probs2"), other_classes("probs2", ARTERY)],
         expect=["{ws}/probs2 has classes background,nerve,artery",
                 f"{PROBS} has background,nerve,vessel"]),
    case("ensemble_class_folder_with_a_binary_folder", "ensemble", PROBS, "{ws}/nerve",
         "--out", "{ws}/e", "--workers", "1", setup=copy_tree("probs/nerve", "nerve"),
         expect=["{ws}/nerve", "a folder of one class", PROBS]),
    case("predict_runs_of_other_classes", "predict", "{ws}/run", "{ws}/run2", "{ws}/data/test",
         "--out", "{ws}/p", *CPU, setup=run_with_classes("run2", ARTERY),
         expect=["{ws}/run2 has classes background,nerve,artery",
                 "{ws}/run has background,nerve,vessel"]),
    case("predict_multiclass_with_a_binary_run", "predict", "{ws}/run", "{ws}/binrun",
         "{ws}/data/test", "--out", "{ws}/p", *CPU,
         expect=["{ws}/binrun", "{ws}/run", "not the same kind of task"]),
    case("train_resume_with_other_classes", "train", "--resume", "{ws}/run", "--classes", "2",
         *CPU, expect=["{ws}/run", "cannot resume", "classes"]),
    case("decode_class_id_beyond_classes_2", "rle-decode", "{ws}/data/train_masks.csv",
         "--classes", "2", "--size", SIZE, "--out", "{ws}/d",
         expect=["{ws}/data/train_masks.csv, line 3 (id 1_1)", "ClassId 2",
                 "beyond --classes background,class1"]),
)


@MISMATCH
def test_class_mismatch_refused(case: Case, mc_workspace: Path) -> None:
    run_case(case, mc_workspace)


LABELS = cases(
    case("score_truth_label_beyond", "score", PROBS, TRUTH,
         setup=label_value("data/train/1_2_mask.png", 3),
         expect=["{ws}/data/train/1_2_mask.png", BEYOND]),
    case("score_truth_manifest_label_beyond", "score", PROBS, FOLDS,
         setup=label_value("data/train/1_2_mask.png", 3),
         expect=[f"{FOLDS}, line 3 (id 1_2)", "{ws}/data/train/1_2_mask.png", BEYOND]),
    case("split_label_beyond", "split", TRUTH, "--classes", "3", "--out", "{ws}/f.csv",
         "--workers", "1", setup=label_value("data/train/1_2_mask.png", 3),
         expect=["{ws}/data/train/1_2_mask.png", BEYOND]),
    case("dedupe_label_beyond", "dedupe", TRUTH, "--classes", "3", "--out", "{ws}/dd",
         "--workers", "1", setup=label_value("data/train/1_2_mask.png", 3),
         expect=["{ws}/data/train/1_2_mask.png", BEYOND]),
    case("train_label_beyond", *train_args("--classes", "3"),
         setup=label_value("data/train/2_2_mask.png", 3),
         expect=[f"{FOLDS}, line 6 (id 2_2)", "{ws}/data/train/2_2_mask.png", BEYOND]),
    case("rle_encode_label_maps_beyond", "rle-encode", TRUTH, "--classes", "3",
         "--out", "{ws}/o.csv", "--workers", "1",
         setup=label_value("data/train/1_2_mask.png", 3),
         expect=["{ws}/data/train/1_2_mask.png", BEYOND]),
    case("split_label_maps_without_classes", "split", TRUTH, "--out", "{ws}/f.csv",
         expect=["{ws}/data/train/1_1_mask.png", "a label map of several classes",
                 "--label N"]),
)


@LABELS
def test_label_maps_refused(case: Case, mc_workspace: Path) -> None:
    run_case(case, mc_workspace)


FOLDERS = cases(
    case("score_class_map_missing", "score", PROBS, TRUTH,
         setup=remove("probs/vessel/1_2.png"), expect=MISSING_MAP),
    case("rle_encode_class_map_missing", "rle-encode", PROBS, "--out", "{ws}/o.csv",
         setup=remove("probs/vessel/1_2.png"), expect=MISSING_MAP),
    case("crf_class_map_missing", "crf", PROBS, TRUTH, "--out", "{ws}/c", "--workers", "1",
         setup=remove("probs/vessel/1_2.png"), expect=MISSING_MAP),
    case("ensemble_class_map_missing", "ensemble", "{ws}/p2", PROBS, "--out", "{ws}/e",
         "--allow-missing", "--workers", "1",
         setup=[copy_tree("probs", "p2"), remove("p2/vessel/1_2.png")],
         expect=["{ws}/p2:", "missing from vessel/", "first: 1_2"]),
    case("score_class_folder_missing", "score", PROBS, TRUTH, setup=remove("probs/vessel"),
         expect=NO_FOLDER),
    case("crf_class_folder_missing", "crf", PROBS, TRUTH, "--out", "{ws}/c", "--workers", "1",
         setup=remove("probs/vessel"), expect=NO_FOLDER),
    case("ensemble_class_folder_is_a_file", "ensemble", PROBS, "{ws}/p2", "--out", "{ws}/e",
         setup=[copy_tree("probs", "p2"), remove("p2/vessel"), write("p2/vessel", "x")],
         expect=["{ws}/p2:", "class folder vessel/ missing"]),
    case("crf_class_map_of_another_size", "crf", PROBS, TRUTH, "--out", "{ws}/c",
         "--workers", "1", setup=resized("probs/vessel/2_1.png"),
         expect=["{ws}/probs/vessel/2_1.png", "size differs from nerve/2_1.png"]),
    case("classes_json_invalid", "score", PROBS, TRUTH,
         setup=write("probs/classes.json", "{not json"), expect=[BAD_JSON, "not valid JSON"]),
    case("classes_json_not_a_list", "ensemble", PROBS, "{ws}/p2", "--out", "{ws}/e",
         setup=[copy_tree("probs", "p2"), write("p2/classes.json", '{"classes": "nerve"}')],
         expect=["{ws}/p2/classes.json", "expected"]),
    case("classes_json_an_array", "rle-encode", PROBS, "--out", "{ws}/o.csv",
         setup=write("probs/classes.json", json.dumps(list(NAMES))),
         expect=[BAD_JSON, "a JSON object"]),
    case("classes_json_one_class", "rle-encode", PROBS, "--out", "{ws}/o.csv",
         setup=write("probs/classes.json", '{"classes": ["background"]}'),
         expect=[BAD_JSON, "need 2 to 255"]),
    case("classes_json_repeated_name", "crf", PROBS, TRUTH, "--out", "{ws}/c", "--workers",
         "1", setup=write("probs/classes.json", '{"classes": ["background", "nerve", "nerve"]}'),
         expect=[BAD_JSON, "'nerve' is given twice"]),
    case("classes_json_unsafe_name", "score", PROBS, TRUTH,
         setup=write("probs/classes.json", '{"classes": ["background", "../x", "vessel"]}'),
         expect=[BAD_JSON, "'../x' is not a safe file name"]),
    case("crf_out_inside_a_class_folder", "crf", PROBS, TRUTH, "--out", "{ws}/probs/nerve/c",
         "--workers", "1", expect=["{ws}/probs/nerve/c", "lies inside the input"]),
    case("score_out_inside_a_class_folder", "score", PROBS, TRUTH,
         "--out", "{ws}/probs/vessel/s",
         expect=["{ws}/probs/vessel/s", "lies inside the input"]),
)


@FOLDERS
def test_class_folders_refused(case: Case, mc_workspace: Path) -> None:
    run_case(case, mc_workspace)


CSVS = cases(
    case("decode_joined_unknown_class", "rle-decode", "{ws}/j.csv", "--classes", CLASSES,
         "--size", SIZE, "--out", "{ws}/d", setup=write("j.csv", JOINED),
         expect=["{ws}/j.csv, line 3", "class 'artery' is not one of nerve, vessel"]),
    case("decode_joined_unknown_class_label_maps", "rle-decode", "{ws}/j.csv", "--classes",
         CLASSES, "--label-maps", "--size", SIZE, "--out", "{ws}/d",
         setup=write("j.csv", JOINED), expect=["{ws}/j.csv, line 3", "'artery'"]),
    case("score_joined_unknown_class", "score", "{ws}/j.csv", TRUTH, "--classes", CLASSES,
         "--size", SIZE, setup=write("j.csv", JOINED),
         expect=["{ws}/j.csv, line 3", "'artery'"]),
    case("rle_encode_ids_from_joined_unknown_class", "rle-encode", PROBS, "--out",
         "{ws}/o.csv", "--ids-from", "{ws}/j.csv", setup=write("j.csv", JOINED),
         expect=["{ws}/j.csv, line 3", "'artery'"]),
    case("decode_long_class_id_beyond", "rle-decode", "{ws}/l.csv", "--classes", "3",
         "--size", SIZE, "--out", "{ws}/d", setup=write("l.csv", LONG_BEYOND),
         expect=["{ws}/l.csv, line 3 (id 1_1)", "ClassId 3 is beyond --classes"]),
    case("score_long_class_id_beyond", "score", "{ws}/l.csv", TRUTH, "--classes", "3",
         "--size", SIZE, setup=write("l.csv", LONG_BEYOND),
         expect=["{ws}/l.csv, line 3 (id 1_1)", "ClassId 3"]),
    case("rle_encode_long_class_id_beyond", "rle-encode", "{ws}/l.csv", "--classes", "3",
         "--size", SIZE, "--out", "{ws}/o.csv", setup=write("l.csv", LONG_BEYOND),
         expect=["{ws}/l.csv, line 3 (id 1_1)", "ClassId 3"]),
    case("rle_encode_ids_from_long_beyond", "rle-encode", PROBS, "--out", "{ws}/o.csv",
         "--ids-from", "{ws}/l.csv", setup=write("l.csv", LONG_BEYOND),
         expect=["{ws}/l.csv, line 3 (id 1_1)", "ClassId 3",
                 "--classes background,nerve,vessel"]),
)


@CSVS
def test_class_csvs_refused(case: Case, mc_workspace: Path) -> None:
    run_case(case, mc_workspace)


OPTIONS = cases(
    case("format_submission_for_a_class_folder", "rle-encode", PROBS, "--out", "{ws}/o.csv",
         "--format", "submission", expect=["--format submission is binary", "long or joined"]),
    case("format_train_for_a_class_folder", "rle-encode", PROBS, "--out", "{ws}/o.csv",
         "--format", "train", expect=["--format train is binary"]),
    case("score_label_with_a_class_folder", "score", PROBS, TRUTH, "--label", "1",
         expect=["--label", "drop --label"]),
    case("rle_encode_label_with_a_class_folder", "rle-encode", PROBS, "--out", "{ws}/o.csv",
         "--label", "1", expect=["--label", "drop --label"]),
    case("train_multilabel_without_classes", *train_args("--multilabel", "--label", "1"),
         expect=["--multilabel needs --classes"]),
    case("train_multilabel_with_two_classes", *train_args("--multilabel", "--classes", "2"),
         expect=["--multilabel needs three classes"]),
    case("recipe_multiclass_without_classes", "train", FOLDS, "--recipe",
         "seed003-sharp-unet-multiclass", "--label", "1", "--epochs", "1", "--out", "{ws}/r",
         *CPU, expect=["seed003-sharp-unet-multiclass", "pass --classes"]),
    case("split_balance_with_classes", "split", TRUTH, "--classes", "3", "--balance", "1:1",
         "--out", "{ws}/f.csv", "--workers", "1", expect=["--balance", "--classes"]),
    case("split_label_and_classes", "split", TRUTH, "--classes", "3", "--label", "1",
         "--out", "{ws}/f.csv", expect=["--label and --classes exclude each other"]),
    case("dedupe_label_and_classes", "dedupe", TRUTH, "--classes", "3", "--label", "1",
         "--out", "{ws}/dd", expect=["--label and --classes exclude each other"]),
    case("train_label_and_classes", *train_args("--classes", "3", "--label", "1"),
         expect=["--label and --classes exclude each other"]),
    case("train_per_class_decoders_with_fusion",
         "train", FOLDS, "--classes", "3", "--arch", "unet", "--decoders", "per-class",
         "--fusion", "apf", "--size", "64x64", "--epochs", "1", "--out", "{ws}/r", *CPU,
         expect=["--decoders per-class and --fusion apf"]),
    case("score_by_class_for_one_class", "score", "{ws}/probs/nerve", TRUTH, "--label", "1",
         "--by", "class", expect=["--by 'class'"]),
    case("score_postprocess_lacking_a_class", "score", PROBS, TRUTH, "--postprocess",
         "{ws}/pp.json", setup=write("pp.json", NERVE_ONLY_PP),
         expect=["{ws}/pp.json", "no post-processing for class 'vessel'"]),
    case("predict_postprocess_lacking_a_class", "predict", "{ws}/run", "{ws}/data/test",
         "--out", "{ws}/p", "--masks", "{ws}/m", "--postprocess", "{ws}/pp.json", *CPU,
         setup=write("pp.json", NERVE_ONLY_PP),
         expect=["{ws}/pp.json", "no post-processing for class 'vessel'"]),
    case("predict_binary_run_with_a_class_postprocess", "predict", "{ws}/binrun",
         "{ws}/data/test", "--out", "{ws}/p", "--postprocess", "{ws}/pp.json", *CPU,
         setup=write("pp.json", NERVE_ONLY_PP),
         expect=["{ws}/pp.json", "a postprocess.json of several classes"]),
    case("synth_four_classes", "synth", "{ws}/s", "--classes", "4", "--size", SIZE,
         expect=["--classes background,class1,class2,class3", "synth draws"]),
    case("decode_one_class", "rle-decode", "{ws}/data/train_masks.csv", "--classes", "1",
         "--out", "{ws}/d", expect=["--classes 1", "need 2 to 255"]),
    case("decode_empty_class_name", "rle-decode", "{ws}/data/train_masks.csv", "--classes",
         "background,,vessel", "--out", "{ws}/d", expect=["--classes", "an empty item"]),
)


@OPTIONS
def test_class_options_refused(case: Case, mc_workspace: Path) -> None:
    run_case(case, mc_workspace)


def test_crf_failing_late_keeps_only_what_resume_uses(mc_workspace: Path) -> None:
    """A vessel map whose body is corrupt (its header is fine) fails crf after the first ids
    are written: the error names the map, only complete ids (both class maps) stay beside
    classes.json and prediction.json, and --resume finishes the folder."""
    ws = mc_workspace
    bad = ws / "probs" / "vessel" / "3_3.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:40] + b"\0" * 20)
    before = snapshot(ws / "probs")
    args = ["crf", ws / "probs", ws / "data" / "train", "--out", ws / "c", "--workers", "1"]
    result = run_cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}"), result.stderr
    assert snapshot(ws / "probs") == before
    out = ws / "c"
    if out.exists():
        nerve = {p.name for p in (out / "nerve").glob("*.png")}
        vessel = {p.name for p in (out / "vessel").glob("*.png")}
        assert nerve == vessel and "3_3.png" not in nerve, (nerve, vessel)
        assert {p.name for p in out.iterdir()} <= \
            {"classes.json", "prediction.json", "nerve", "vessel"}
    bad.write_bytes(good)
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, (result.stderr, result.exception)
    for name in NAMES[1:]:
        assert sorted(p.stem for p in (out / name).glob("*.png")) == sorted(TRAIN_IDS)
    assert not [p for p in ws.rglob(".*")], "hidden files left"
