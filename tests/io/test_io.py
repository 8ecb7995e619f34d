"""Image and mask reading, discovery in the three forms of docs/formats.md, manifests,
atomic writes."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from nerveseg_cli.errors import NervesegError, NervesegWarning
from nerveseg_cli.evaluation.postprocess import threshold_level
from nerveseg_cli.io.datasets import (
    Sample,
    discover_images,
    discover_maps,
    id_sort_key,
    mask_areas,
    read_manifest,
    subject_of,
    validate_id,
    write_manifest,
)
from nerveseg_cli.io.images import MaskReader, parse_size, read_image, read_mask
from nerveseg_cli.io.outputs import atomic_open, prepare_output_dir, write_image


def test_tif_lzw_round_trip(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (42, 58), dtype=np.uint8)
    write_image(tmp_path / "a.tif", image)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), image)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    image = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    path = tmp_path / f"a{suffix}"
    write_image(path, image)
    np.testing.assert_array_equal(read_image(path), image)


def test_sixteen_bit_and_colour_become_uint8_gray(tmp_path: Path) -> None:
    deep = np.array([[0, 257, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), [[0, 1, 255]])
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[..., 1] = 200  # pure green
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    gray = read_image(tmp_path / "colour.png")
    assert gray.shape == (2, 2) and gray.dtype == np.uint8
    assert abs(int(gray[0, 0]) - round(0.587 * 200)) <= 1


def test_jpeg_masks_read_by_half_range(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    cv2.imwrite(str(tmp_path / "m.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 60])
    read = read_mask(tmp_path / "m.jpg")
    assert abs(int(read.sum()) - 256) <= 16


def test_label_selects_value(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "l.png"), labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png", label=2), labels == 2)
    # several classes and no --label: no single foreground, so an error naming the values
    with pytest.raises(NervesegError, match="l.png: a label map of several classes "
                                            r"\(values 0, 1, 2\); pass --label N"):
        read_mask(tmp_path / "l.png")


def test_label_map_set_warns(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "l.png"), np.array([[0, 1]], dtype=np.uint8))
    with pytest.warns(NervesegWarning, match="--label"):
        mask_areas([Sample("l", None, tmp_path / "l.png", "l")], MaskReader())
    cv2.imwrite(str(tmp_path / "m.png"), np.array([[0, 255]], dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_areas([Sample("m", None, tmp_path / "m.png", "m")], MaskReader())


def test_mask_reader_never_forgets_a_foreground_across_threads(tmp_path: Path) -> None:
    # One mask with foreground among many empty ones, read by several threads at once: the
    # set is not a label map, whatever order the threads finish in.
    cv2.imwrite(str(tmp_path / "fg.png"), np.array([[0, 255]], dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "low.png"), np.array([[0, 1]], dtype=np.uint8))
    names = ["low.png"] * 200 + ["fg.png"] + ["low.png"] * 200
    samples = [Sample(str(i), None, tmp_path / name, "s") for i, name in enumerate(names)]
    for _ in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            mask_areas(samples, MaskReader(), workers=8)


def test_unreadable_image_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(NervesegError, match="x.png: not a readable image"):
        read_image(tmp_path / "x.png")
    with pytest.raises(NervesegError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_discover_kaggle_folder(synth_root: Path) -> None:
    train = discover_images(synth_root / "train")
    assert [s.id for s in train[:3]] == ["1_1", "1_2", "1_3"]
    assert all(s.mask is not None and s.mask.name == f"{s.id}_mask.tif" for s in train)
    assert {s.subject for s in train} == {"1", "2", "3"}
    test = discover_images(synth_root / "test")
    assert [s.id for s in test] == [str(i) for i in range(1, 7)]
    assert all(s.mask is None and s.subject == s.id for s in test)


def test_discover_generic_folder_and_maps(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        write_image(tmp_path / "images" / f"{name}.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    samples = discover_images(tmp_path)
    assert [s.id for s in samples] == ["a", "b", "c"]
    assert samples[0].mask == tmp_path / "masks" / "a.png" and samples[1].mask is None
    assert list(discover_maps(tmp_path)) == ["a"]
    assert list(discover_maps(tmp_path / "images")) == ["a", "b", "c"]


def test_ids_differing_only_in_case_are_an_error(tmp_path: Path) -> None:
    """Their outputs would be one file on macOS or Windows: refused, naming both files."""
    for name in ("A1.png", "a1.png", "b.png"):
        write_image(tmp_path / name, np.zeros((2, 2), np.uint8))
    with pytest.raises(NervesegError, match=r"a1.png: id 'a1' differs from 'A1' \(first in "
                                            r"A1.png\) only in case"):
        discover_images(tmp_path)


def test_duplicate_stems_are_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    write_image(tmp_path / "a.tif", np.zeros((2, 2), np.uint8))
    with pytest.raises(NervesegError, match="duplicate id 'a' \\(first in a\\."):
        discover_images(tmp_path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NervesegError, match="no images found"):
        discover_images(tmp_path)


def test_manifest_round_trip(tmp_path: Path, synth_root: Path) -> None:
    samples = discover_images(synth_root / "train")
    samples = [Sample(s.id, s.image, s.mask, s.subject, i % 2 == 0)
               for i, s in enumerate(samples)]
    path = tmp_path / "sub" / "manifest.csv"
    write_manifest(path, samples, extra={"fold": [i % 3 for i in range(len(samples))]})
    header = path.read_text().splitlines()[0]
    assert header == "id,image,mask,subject,has_mask,fold"
    back = read_manifest(path)
    assert [(s.id, s.image.resolve(), s.mask.resolve(), s.subject, s.has_mask)
            for s in back] == [(s.id, s.image.resolve(), s.mask.resolve(), s.subject,
                                s.has_mask) for s in samples]
    assert discover_images(path) == back


@pytest.mark.parametrize(("content", "fragment"), [
    ("id,image\n", "lacks column(s) mask, subject, has_mask"),
    ("id,image,mask,subject,has_mask\n../x,a.png,,s,\n", "line 2: id '../x'"),
    ("id,image,mask,subject,has_mask\na,a.png,,s,\na,b.png,,s,\n", "line 3: duplicate id"),
    ("id,image,mask,subject,has_mask\nCase_1,a.png,,s,\ncase_1,b.png,,s,\n",
     "line 3: id 'case_1' differs from 'Case_1' (first on line 2) only in case"),
    ("id,image,mask,subject,has_mask\na,a.png,,s,yes\n", "has_mask must be"),
])
def test_bad_manifests(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(NervesegError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(path)


def test_atomic_open_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_output_folder_refused_unless_overwrite(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(NervesegError, match="--overwrite"):
        prepare_output_dir(tmp_path / "out", overwrite=False)
    assert prepare_output_dir(tmp_path / "out", overwrite=True).is_dir()


def test_small_helpers() -> None:
    assert parse_size("580x420") == (580, 420)
    with pytest.raises(NervesegError):
        parse_size("580")
    assert threshold_level(0.5) == 127 and threshold_level(0.6) == 153
    assert threshold_level(0.0) == 0 and threshold_level(1.0) == 255
    assert subject_of("12_7") == "12" and subject_of("17") == "17"
    assert subject_of("patA-3", r"^(\w+)-") == "patA"
    assert sorted(["10_1", "2_10", "2_9", "b", "a"], key=id_sort_key) == \
        ["2_9", "2_10", "10_1", "a", "b"]
    for bad in ["", ".hidden", "a/b", "a\\b", "..", "a..b", "a b"]:
        with pytest.raises(NervesegError):
            validate_id(bad, "here")


def test_atomic_writes_get_the_usual_file_mode(tmp_path: Path) -> None:
    import os

    write_image(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask
