"""``nerveseg rle-encode`` and ``rle-decode`` with several classes: a folder of several classes
(or label maps, or another multi-class CSV) to the long (``ImageId,ClassId,EncodedPixels``) or
joined (``Image_Label,EncodedPixels``) Kaggle form, and back.

Each class is encoded on its own, exactly as a binary folder would be (its threshold and min
area, its own RLE), so classes may overlap as the competitions' masks may; a label map cannot
hold overlapping classes, so decoding to label maps gives an overlap to the lower class index
(as :func:`~nerveseg_cli.evaluation.postprocess.label_map` does on a tie).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nerveseg_cli.classes import Classes, write_classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.evaluation.postprocess import PostProcess, resolve_class_posts
from nerveseg_cli.io.kaggle_csv import (
    FORMATS,
    LONG,
    MULTICLASS_FORMATS,
    RleTable,
    format_multiclass_csv,
    parse_multiclass,
    read_pairs_file,
    read_rle_csv,
    table_classes,
)
from nerveseg_cli.io.outputs import Outputs, atomic_write_text, write_label_map, write_mask
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.io.rle import rle_encode, runs_to_mask
from nerveseg_cli.io.sources import ClassSource, open_class_source
from nerveseg_cli.submission.ids_from import compare_to_ids_from


@dataclass(frozen=True)
class ClassEncodeResult:
    format: str
    classes: Classes
    rows: int
    non_empty: dict[str, int]  # class -> rows with a mask
    missing: list[str]
    extra: list[str]
    posts: dict[str, PostProcess]

    def summary(self, out: Path) -> dict[str, Any]:
        return {"format": self.format, "classes": ",".join(self.classes.foreground),
                "rows": self.rows,
                **{f"non_empty_{name}": n for name, n in self.non_empty.items()},
                "written_empty_missing": len(self.missing),
                "left_out_not_in_ids": len(self.extra),
                **{f"threshold_{name}": p.threshold for name, p in self.posts.items()},
                **{f"min_area_{name}": p.min_area for name, p in self.posts.items()},
                "out": str(out)}


def encode_classes(source: str | Path, out: str | Path, *, fmt: str | None = None,
                   classes: Classes | None = None, threshold: float | None = None,
                   min_area: int | None = None, postprocess: str | Path | None = None,
                   ids_from: str | Path | None = None, allow_missing: bool = False,
                   size: tuple[int, int] = (580, 420), overwrite: bool = False,
                   workers: int = 4) -> ClassEncodeResult:
    """Maps of several classes -> a multi-class Kaggle CSV, one row per image and class.

    ``fmt`` is ``long`` or ``joined``; unset, the form of ``ids_from`` (a sample submission
    whose rows, in their order, are the rows written) or ``long``."""
    maps = open_class_source(source, classes, size)
    classes = maps.classes
    posts = resolve_class_posts(classes.foreground, threshold, min_area, postprocess)
    order = read_pairs_file(ids_from, classes) if ids_from else None
    fmt = fmt or (read_rle_csv(ids_from).format if ids_from else LONG)
    if fmt not in MULTICLASS_FORMATS:
        what = "is binary" if fmt in FORMATS else "is no Kaggle CSV form"
        raise NervesegError(f"--format {fmt} {what}; several classes are written in the "
                            f"{' or '.join(MULTICLASS_FORMATS)} form")
    with Outputs(inputs=[*maps.input_paths(), ids_from, postprocess]) as outputs:
        target = outputs.file(out, overwrite=overwrite)
        images, missing, extra = _images(maps, order, allow_missing, ids_from)
        encoder = _Encoder(maps, [posts[name] for name in classes.foreground])
        encoded: dict[tuple[str, int], str] = {}
        for sample_id, rles in zip(images, thread_map(encoder, images, workers), strict=True):
            encoded.update({(sample_id, k): rle for k, rle in enumerate(rles, start=1)})
        atomic_write_text(target, format_multiclass_csv(encoded, fmt, classes, order))
    rows = len(order) if order is not None else len(images) * len(classes.foreground)
    non_empty = {name: sum(1 for (_, k), rle in encoded.items() if k == index and rle)
                 for index, name in enumerate(classes.foreground, start=1)}
    return ClassEncodeResult(fmt, classes, rows, non_empty, missing, extra, posts)


def _images(maps: ClassSource, order: list[tuple[str, int]] | None, allow_missing: bool,
            ids_from: str | Path | None) -> tuple[list[str], list[str], list[str]]:
    """The images to encode (those of ``order`` with maps, else all), those of ``order``
    without maps (written empty) and the maps ``order`` leaves out."""
    available = set(maps.ids)
    if order is None:
        return maps.ids, [], []
    wanted = list(dict.fromkeys(i for i, _ in order))
    missing, extra = compare_to_ids_from(available, wanted, maps.path, ids_from, allow_missing,
                                         "images", "images")
    return [i for i in wanted if i in available], missing, extra


class _Encoder:
    """One image's RLE per foreground class, each class post-processed on its own."""

    def __init__(self, maps: ClassSource, posts: list[PostProcess]) -> None:
        self.maps, self.posts = maps, posts

    def __call__(self, sample_id: str) -> list[str]:
        values = self.maps.read_values(sample_id)
        return [rle_encode(post.apply(values[k])) for k, post in enumerate(self.posts)]


# --------------------------------------------------------------------------------------------
# decoding


@dataclass(frozen=True)
class ClassDecodeResult:
    format: str
    classes: Classes
    images: int
    non_empty: dict[str, int]
    label_maps: bool

    def summary(self, out: Path) -> dict[str, Any]:
        return {"format": self.format, "classes": ",".join(self.classes.foreground),
                "images": self.images,
                **{f"non_empty_{name}": n for name, n in self.non_empty.items()},
                "written_as": "label maps" if self.label_maps else "a folder per class",
                "out": str(out)}


def decode_classes(table: RleTable, out: str | Path, *, classes: Classes | None = None,
                   size: tuple[int, int] = (580, 420), label_maps: bool = False,
                   overwrite: bool = False, workers: int = 4,
                   progress: Callable[[int], None] | None = None) -> ClassDecodeResult:
    """A multi-class table -> ``OUT/classes.json`` and ``OUT/<class>/ID.png`` masks (a folder
    of several classes, docs/formats.md), or with ``label_maps`` one palette label map
    ``OUT/ID.png`` per image. Every row is validated before anything is written."""
    classes = table_classes(table, classes)
    runs = parse_multiclass(table, size, classes)
    width, height = size
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    with Outputs(inputs=[table.path]) as outputs:
        folder = outputs.folder(out, overwrite=overwrite)
        if not label_maps:
            write_classes(folder, classes)
            for name in classes.foreground:
                (folder / name).mkdir()

        def write(sample_id: str) -> None:
            masks = [runs_to_mask(*runs[sample_id].get(k, empty), height, width)
                     for k in range(1, classes.count)]
            if label_maps:
                labels = np.zeros((height, width), np.uint8)
                # overlapping classes: the lower index wins, as everywhere a label map is made
                for k in range(len(masks), 0, -1):
                    labels[masks[k - 1]] = k
                write_label_map(folder / f"{sample_id}.png", labels)
            else:
                for name, mask in zip(classes.foreground, masks, strict=True):
                    write_mask(folder / name / f"{sample_id}.png", mask)

        for _ in thread_map(write, list(runs), workers):
            if progress:
                progress(1)
    non_empty = {name: sum(1 for found in runs.values() if found.get(k, empty)[0].size)
                 for k, name in enumerate(classes.foreground, start=1)}
    return ClassDecodeResult(table.format, classes, len(runs), non_empty, label_maps)
