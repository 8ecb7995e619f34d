"""``rle-encode`` and ``rle-decode`` of several classes through the library: label maps and
folders of several classes to the long or joined Kaggle form and back, exactly; sample
submissions; per-class post-processing; what several classes refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerveseg_cli.classes import Classes, read_classes, write_classes
from nerveseg_cli.errors import NervesegError, NervesegWarning
from nerveseg_cli.io.images import read_mask
from nerveseg_cli.io.kaggle_csv import JOINED, LONG, read_rle_csv
from nerveseg_cli.io.outputs import write_image, write_label_map
from nerveseg_cli.io.rle import rle_decode, rle_encode
from nerveseg_cli.submission.codec import decode_csv_to_folder, encode_folder
from nerveseg_cli.submission.codec_classes import ClassDecodeResult, ClassEncodeResult

WIDTH, HEIGHT = 20, 14
SIZE = (WIDTH, HEIGHT)
CLASSES = Classes.parse("background,nerve,vessel")
IDS = ["1_1", "1_2", "2_1", "10"]


def random_labels(seed: int, count: int = CLASSES.count) -> dict[str, np.ndarray]:
    """Blocky label maps, one of them all background."""
    rng = np.random.default_rng(seed)
    labels = {i: rng.integers(0, count, (HEIGHT // 2, WIDTH // 2)).repeat(2, 0).repeat(2, 1)
              .astype(np.uint8) for i in IDS}
    labels[IDS[1]][:] = 0
    return labels


def write_labels(folder: Path, labels: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    for sample_id, label_map in labels.items():
        write_label_map(folder / f"{sample_id}.png", label_map)
    return folder


def write_class_folder(folder: Path, classes: Classes, values: dict[str, np.ndarray]) -> Path:
    """values: id -> (K, H, W) uint8 maps."""
    folder.mkdir()
    write_classes(folder, classes)
    for k, name in enumerate(classes.foreground):
        (folder / name).mkdir()
        for sample_id, maps in values.items():
            write_image(folder / name / f"{sample_id}.png", maps[k])
    return folder


def read_palette(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def long_rows(path: Path) -> list[tuple[str, str, str]]:
    table = read_rle_csv(path)
    return [(r.id, r.klass, r.pixels) for r in table.rows]


@pytest.fixture
def labels(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    found = random_labels(0)
    return write_labels(tmp_path / "labels", found), found


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("fmt", [LONG, JOINED])
def test_label_maps_round_trip_through_csv(tmp_path: Path, fmt: str,
                                           labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, originals = labels
    csv_path = tmp_path / "sub.csv"
    result = encode_folder(folder, csv_path, fmt=fmt, classes=CLASSES, size=SIZE, workers=2)
    assert isinstance(result, ClassEncodeResult)
    assert result.format == fmt and result.rows == len(IDS) * 2
    assert result.non_empty == {"nerve": len(IDS) - 1, "vessel": len(IDS) - 1}
    table = read_rle_csv(csv_path)
    assert table.format == fmt
    assert [r.id for r in table.rows] == [i for i in IDS for _ in (1, 2)]  # numeric order
    for row in table.rows:
        k = int(row.klass) if fmt == LONG else CLASSES.names.index(row.klass)
        np.testing.assert_array_equal(rle_decode(row.pixels, HEIGHT, WIDTH),
                                      originals[row.id] == k)

    back = tmp_path / "back"
    decoded = decode_csv_to_folder(csv_path, back, classes=CLASSES, size=SIZE,
                                   label_maps=True)
    assert isinstance(decoded, ClassDecodeResult) and decoded.label_maps
    assert decoded.images == len(IDS)
    assert sorted(p.name for p in back.iterdir()) == sorted(f"{i}.png" for i in IDS)
    for sample_id, label_map in originals.items():
        np.testing.assert_array_equal(read_palette(back / f"{sample_id}.png"), label_map)


def test_decode_to_a_class_folder_and_encode_it_again(
        tmp_path: Path, labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, originals = labels
    first = tmp_path / "first.csv"
    encode_folder(folder, first, classes=CLASSES, size=SIZE)
    back = tmp_path / "classes"
    decoded = decode_csv_to_folder(first, back, size=SIZE)
    assert not decoded.label_maps
    # without --classes the long form names its classes by number
    assert read_classes(back) == Classes.parse("3")
    assert sorted(p.name for p in back.iterdir()) == ["class1", "class2", "classes.json"]
    for k, name in enumerate(("class1", "class2"), start=1):
        for sample_id, label_map in originals.items():
            np.testing.assert_array_equal(read_mask(back / name / f"{sample_id}.png"),
                                          label_map == k)
    second = tmp_path / "second.csv"
    assert encode_folder(back, second, size=SIZE).classes == Classes.parse("3")  # no --classes
    assert second.read_text() == first.read_text()


def test_a_joined_csv_decodes_to_folders_named_by_its_classes(
        tmp_path: Path, labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, originals = labels
    csv_path = tmp_path / "sub.csv"
    encode_folder(folder, csv_path, fmt=JOINED, classes=CLASSES, size=SIZE)
    back = tmp_path / "back"
    decode_csv_to_folder(csv_path, back, size=SIZE)  # the names come from the rows
    assert read_classes(back) == CLASSES
    for sample_id, label_map in originals.items():
        np.testing.assert_array_equal(read_mask(back / "vessel" / f"{sample_id}.png"),
                                      label_map == 2)


def test_a_multiclass_csv_re_encodes_in_the_other_form(
        tmp_path: Path, labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = labels
    long_csv, joined_csv, again = (tmp_path / n for n in ("l.csv", "j.csv", "l2.csv"))
    encode_folder(folder, long_csv, fmt=LONG, classes=CLASSES, size=SIZE)
    encode_folder(long_csv, joined_csv, fmt=JOINED, classes=CLASSES, size=SIZE)
    encode_folder(joined_csv, again, fmt=LONG, size=SIZE)
    assert again.read_text() == long_csv.read_text()


def test_overlapping_classes_decode_to_label_maps_lowest_index_first(tmp_path: Path) -> None:
    csv_path = tmp_path / "sub.csv"
    csv_path.write_text("ImageId,ClassId,EncodedPixels\n7,1,1 4\n7,2,3 4\n")
    decode_csv_to_folder(csv_path, tmp_path / "maps", classes=CLASSES, size=(2, 3),
                         label_maps=True)
    # the overlap (pixels 3 and 4) goes to class 1, as in score's label maps
    np.testing.assert_array_equal(read_palette(tmp_path / "maps" / "7.png"),
                                  [[1, 1], [1, 2], [1, 2]])
    decode_csv_to_folder(csv_path, tmp_path / "folders", classes=CLASSES, size=(2, 3))
    np.testing.assert_array_equal(read_mask(tmp_path / "folders" / "nerve" / "7.png"),
                                  [[1, 1], [1, 0], [1, 0]])  # each class keeps its own mask
    np.testing.assert_array_equal(read_mask(tmp_path / "folders" / "vessel" / "7.png"),
                                  [[0, 1], [0, 1], [1, 1]])


# --------------------------------------------------------------------------------------------
# --ids-from: a sample submission fixes the rows and their order


def test_long_sample_submission_fixes_rows_and_order(
        tmp_path: Path, labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, originals = labels
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,ClassId,EncodedPixels\n10,2,1 1\n1_1,1,1 1\n10,1,1 1\n"
                      "2_1,2,1 1\n")
    out = tmp_path / "sub.csv"
    with pytest.warns(NervesegWarning, match="1 images are not in"):
        result = encode_folder(folder, out, classes=CLASSES, ids_from=sample, size=SIZE)
    assert result.format == LONG and result.rows == 4
    assert result.extra == ["1_2"] and result.missing == []
    expected = [(i, str(k), rle_encode(originals[i] == k))
                for i, k in [("10", 2), ("1_1", 1), ("10", 1), ("2_1", 2)]]
    assert long_rows(out) == expected


def test_joined_sample_submission_sets_the_form(
        tmp_path: Path, labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, originals = labels
    sample = tmp_path / "sample.csv"
    sample.write_text("Image_Label,EncodedPixels\n" + "".join(
        f"{i}_{name}," + "\n" for i in reversed(IDS) for name in ("vessel", "nerve")))
    out = tmp_path / "sub.csv"
    result = encode_folder(folder, out, classes=CLASSES, ids_from=sample, size=SIZE)
    assert result.format == JOINED
    lines = out.read_text().splitlines()
    assert lines[0] == "Image_Label,EncodedPixels"
    assert lines[1:] == [f"{i}_{name},{rle_encode(originals[i] == k)}"
                         for i in reversed(IDS) for name, k in (("vessel", 2), ("nerve", 1))]
    forced = tmp_path / "long.csv"
    assert encode_folder(folder, forced, fmt=LONG, classes=CLASSES, ids_from=sample,
                         size=SIZE).format == LONG
    assert [(i, int(k)) for i, k, _ in long_rows(forced)] == [
        (i, k) for i in reversed(IDS) for k in (2, 1)]


def test_images_missing_from_the_maps_are_refused_unless_allowed(
        tmp_path: Path, labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, originals = labels
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,ClassId,EncodedPixels\n1_1,1,\n99,1,\n99,2,\n1_1,2,\n")
    out = tmp_path / "sub.csv"
    with pytest.raises(NervesegError, match=r"1 images of .*sample.csv have no prediction "
                                            r"\(first: 99\); pass --allow-missing"):
        encode_folder(folder, out, classes=CLASSES, ids_from=sample, size=SIZE)
    assert not out.exists()
    with pytest.warns(NervesegWarning):
        result = encode_folder(folder, out, classes=CLASSES, ids_from=sample, size=SIZE,
                               allow_missing=True)
    assert result.missing == ["99"]
    assert long_rows(out) == [("1_1", "1", rle_encode(originals["1_1"] == 1)), ("99", "1", ""),
                              ("99", "2", ""), ("1_1", "2", rle_encode(originals["1_1"] == 2))]


@pytest.mark.parametrize(("text", "fragment"), [
    ("img,pixels\n1_1,\n", "a binary CSV (submission)"),
    ("ImageId,ClassId,EncodedPixels\n1_1,3,\n", "ClassId 3 is beyond --classes"),
    ("Image_Label,EncodedPixels\n1_1_artery,\n", "class 'artery' is not one of nerve, vessel"),
    ("ImageId,ClassId,EncodedPixels\n", "no rows"),
])
def test_bad_sample_submissions_are_refused(tmp_path: Path, text: str, fragment: str,
                                            labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text(text)
    with pytest.raises(NervesegError) as info:
        encode_folder(labels[0], tmp_path / "sub.csv", classes=CLASSES, ids_from=sample,
                      size=SIZE)
    assert fragment in str(info.value)
    assert not (tmp_path / "sub.csv").exists()


# --------------------------------------------------------------------------------------------
# what several classes refuse


@pytest.mark.parametrize(("fmt", "fragment"), [
    ("submission", "--format submission is binary"),
    ("train", "--format train is binary"),
    ("csv", "--format csv is no Kaggle CSV form"),
])
def test_binary_formats_are_refused_for_several_classes(
        tmp_path: Path, fmt: str, fragment: str,
        labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    with pytest.raises(NervesegError, match=fragment):
        encode_folder(labels[0], tmp_path / "sub.csv", fmt=fmt, classes=CLASSES, size=SIZE)
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize(("option", "fragment"), [
    ({"label": 1}, "--label takes one class"),
    ({"presence_threshold": 0.5}, "predict gates each class by its own presence"),
    ({"presence_from": "presence.csv"}, "predict gates each class by its own presence"),
])
def test_label_and_presence_are_refused_for_several_classes(
        tmp_path: Path, option: dict, fragment: str,
        labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    with pytest.raises(NervesegError, match=fragment):
        encode_folder(labels[0], tmp_path / "sub.csv", classes=CLASSES, size=SIZE, **option)


def test_label_and_presence_are_refused_for_a_class_folder(tmp_path: Path) -> None:
    values = {i: np.zeros((2, HEIGHT, WIDTH), np.uint8) for i in IDS}
    folder = write_class_folder(tmp_path / "probs", CLASSES, values)
    with pytest.raises(NervesegError, match="--label takes one class"):
        encode_folder(folder, tmp_path / "sub.csv", label=2, size=SIZE)
    with pytest.raises(NervesegError, match="predict gates each class by its own presence"):
        encode_folder(folder, tmp_path / "sub.csv", presence_threshold=0.2, size=SIZE)
    assert not (tmp_path / "sub.csv").exists()


def test_label_maps_without_classes_are_the_binary_path(
        tmp_path: Path, labels: tuple[Path, dict[str, np.ndarray]]) -> None:
    with pytest.raises(NervesegError, match="a label map of several classes"):
        encode_folder(labels[0], tmp_path / "sub.csv", size=SIZE)
    binary = tmp_path / "binary.csv"  # --label picks one class, as without --classes
    encode_folder(labels[0], binary, label=2, size=SIZE)
    assert read_rle_csv(binary).format == "submission"


def test_a_binary_csv_decodes_only_as_binary(tmp_path: Path) -> None:
    csv_path = tmp_path / "sub.csv"
    csv_path.write_text("img,pixels\n1,1 1\n")
    for options in ({"classes": CLASSES}, {"label_maps": True}):
        with pytest.raises(NervesegError, match="--classes and --label-maps are for the long"):
            decode_csv_to_folder(csv_path, tmp_path / "out", size=(2, 2), **options)
        assert not (tmp_path / "out").exists()
    # two classes are the binary path
    decode_csv_to_folder(csv_path, tmp_path / "out", size=(2, 2),
                         classes=Classes.parse("background,nerve"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1.png"]


def test_a_joined_class_name_with_an_underscore_is_refused(tmp_path: Path) -> None:
    classes = Classes.parse("background,left_nerve,vessel")
    labels = write_labels(tmp_path / "labels", {"1": np.ones((2, 2), np.uint8)})
    with pytest.raises(NervesegError, match="'left_nerve' holds '_'"):
        encode_folder(labels, tmp_path / "sub.csv", fmt=JOINED, classes=classes, size=(2, 2))
    assert not (tmp_path / "sub.csv").exists()


# --------------------------------------------------------------------------------------------
# per-class post-processing


def probability_values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = {i: rng.integers(0, 256, (2, HEIGHT, WIDTH)).astype(np.uint8) for i in IDS}
    values[IDS[2]][0] = np.where(values[IDS[2]][0] > 250, 255, 0)  # a small nerve
    return values


def expected_rle(values: np.ndarray, threshold: float, min_area: int) -> str:
    mask = values / 255 > threshold + 1e-12
    return rle_encode(mask if mask.sum() >= min_area else np.zeros_like(mask))


def test_per_class_postprocess_applies_to_each_class(tmp_path: Path) -> None:
    values = probability_values(1)
    folder = write_class_folder(tmp_path / "probs", CLASSES, values)
    posts = {"nerve": {"threshold": 0.3, "min_area": 20},
             "vessel": {"threshold": 0.8, "min_area": 0}}
    post_file = tmp_path / "postprocess.json"
    post_file.write_text(json.dumps({"classes": posts, "mean_dice": 0.5}))
    out = tmp_path / "sub.csv"
    result = encode_folder(folder, out, postprocess=post_file, size=SIZE)
    assert {n: (p.threshold, p.min_area) for n, p in result.posts.items()} == {
        "nerve": (0.3, 20), "vessel": (0.8, 0)}
    summary = result.summary(out)
    assert summary["threshold_nerve"] == 0.3 and summary["min_area_vessel"] == 0
    expected = [(i, str(k), expected_rle(values[i][k - 1], **posts[name]))
                for i in IDS for k, name in ((1, "nerve"), (2, "vessel"))]
    assert long_rows(out) == expected
    assert ("2_1", "1", "") in expected  # the small nerve is below its min area

    # explicit options win over the file, for every class
    both = tmp_path / "both.csv"
    encode_folder(folder, both, postprocess=post_file, min_area=0, size=SIZE)
    assert long_rows(both) == [
        (i, str(k), expected_rle(values[i][k - 1], posts[name]["threshold"], 0))
        for i in IDS for k, name in ((1, "nerve"), (2, "vessel"))]


def test_a_binary_postprocess_applies_to_every_class(tmp_path: Path) -> None:
    values = probability_values(2)
    folder = write_class_folder(tmp_path / "probs", CLASSES, values)
    post_file = tmp_path / "postprocess.json"
    post_file.write_text(json.dumps({"threshold": 0.6, "min_area": 5}))
    out = tmp_path / "sub.csv"
    encode_folder(folder, out, postprocess=post_file, fmt=JOINED, size=SIZE)
    lines = out.read_text().splitlines()[1:]
    assert lines == [f"{i}_{name},{expected_rle(values[i][k], 0.6, 5)}"
                     for i in IDS for k, name in enumerate(CLASSES.foreground)]


@pytest.mark.parametrize(("posts", "fragment"), [
    ({"nerve": {"threshold": 0.5, "min_area": 0}}, "no post-processing for class 'vessel'"),
    ({"nerve": {"threshold": 2, "min_area": 0}, "vessel": {"threshold": 0.5, "min_area": 0}},
     "class nerve: threshold 2 is not a number in [0, 1]"),
    ({"nerve": {"threshold": 0.5, "min_area": 0}, "vessel": {"threshold": 0.5}},
     "class vessel: not a postprocess.json"),
])
def test_bad_per_class_postprocess_is_refused(tmp_path: Path, posts: dict,
                                              fragment: str) -> None:
    folder = write_class_folder(tmp_path / "probs", CLASSES, probability_values(3))
    post_file = tmp_path / "postprocess.json"
    post_file.write_text(json.dumps({"classes": posts}))
    with pytest.raises(NervesegError) as info:
        encode_folder(folder, tmp_path / "sub.csv", postprocess=post_file, size=SIZE)
    assert str(info.value).startswith(str(post_file)) and fragment in str(info.value)


# --------------------------------------------------------------------------------------------
# a failed decode leaves no output


@pytest.mark.parametrize("rows", [
    "1,1,1 2\n2,1,1 2 3\n",  # an odd token count on the last row
    "1,1,1 2\n2,2,280 2\n",  # past the image end
    "1,1,1 2\n2,3,\n",  # beyond --classes
    "1,1,5 2 1 2\n",  # runs out of order
])
@pytest.mark.parametrize("label_maps", [False, True])
def test_a_failed_decode_leaves_no_output(tmp_path: Path, rows: str, label_maps: bool) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("ImageId,ClassId,EncodedPixels\n" + rows)
    out = tmp_path / "out"
    with pytest.raises(NervesegError, match=r"bad\.csv, line \d"):
        decode_csv_to_folder(csv_path, out, classes=CLASSES, size=SIZE, label_maps=label_maps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]  # no partial folder


def test_decode_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    csv_path = tmp_path / "sub.csv"
    csv_path.write_text("ImageId,ClassId,EncodedPixels\n1,1,1 1\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(NervesegError):
        decode_csv_to_folder(csv_path, out, classes=CLASSES, size=(2, 2))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    decode_csv_to_folder(csv_path, out, classes=CLASSES, size=(2, 2), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "keep.txt", "nerve",
                                                     "vessel"]
