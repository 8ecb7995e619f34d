"""``nerveseg rle-encode`` and ``nerveseg rle-decode``: masks or probability maps to a Kaggle CSV
and back (the CSV forms are :mod:`nerveseg_cli.io.kaggle_csv`'s, the codec
:mod:`nerveseg_cli.io.rle`'s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nerveseg_cli.classes import Classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.evaluation.postprocess import PostProcess, resolve_postprocess
from nerveseg_cli.io.datasets import sort_ids
from nerveseg_cli.io.images import MaskReader
from nerveseg_cli.io.kaggle_csv import (
    HEADERS,
    SUBMISSION,
    format_rle_csv,
    parse_table,
    read_ids_file,
    read_rle_csv,
)
from nerveseg_cli.io.outputs import Outputs, atomic_write_text, write_mask
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.io.rle import rle_encode, runs_to_mask
from nerveseg_cli.submission.ids_from import compare_to_ids_from


@dataclass(frozen=True)
class EncodeResult:
    rows: int
    non_empty: int
    missing: list[str]
    extra: list[str]
    post: PostProcess

    def summary(self, out: Path) -> dict[str, Any]:
        return {"rows": self.rows, "non_empty": self.non_empty,
                "written_empty_missing": len(self.missing),
                "left_out_not_in_ids": len(self.extra),
                "threshold": self.post.threshold, "min_area": self.post.min_area,
                "out": str(out)}


if TYPE_CHECKING:
    from nerveseg_cli.io.sources import MapSource
    from nerveseg_cli.submission.codec_classes import ClassDecodeResult, ClassEncodeResult


def encode_folder(source: str | Path, out: str | Path, *, fmt: str | None = None,
                  classes: Classes | None = None,
                  threshold: float | None = None, min_area: int | None = None,
                  postprocess: str | Path | None = None, ids_from: str | Path | None = None,
                  allow_missing: bool = False, label: int | None = None,
                  size: tuple[int, int] = (580, 420), overwrite: bool = False,
                  presence_threshold: float | None = None,
                  presence_from: str | Path | None = None,
                  workers: int = 4) -> EncodeResult | ClassEncodeResult:
    """``nerveseg rle-encode``: masks or probability maps -> a Kaggle CSV; several classes
    (a folder with classes.json, label maps with ``classes``) -> the long or joined form.

    (Keyword options, one per ``nerveseg rle-encode`` flag, as every command's function has.)
    """
    from nerveseg_cli.io.sources import is_multiclass, open_source

    if is_multiclass(source, classes):
        return _encode_classes(source, out, fmt=fmt, classes=classes, threshold=threshold,
                               min_area=min_area, postprocess=postprocess, ids_from=ids_from,
                               allow_missing=allow_missing, label=label, size=size,
                               overwrite=overwrite, presence_threshold=presence_threshold,
                               presence_from=presence_from, workers=workers)
    fmt = fmt or SUBMISSION
    if fmt not in HEADERS:
        raise NervesegError(f"--format {fmt} is not one of {', '.join(HEADERS)} (the long and "
                            "joined forms are for several classes: pass --classes)")
    post = resolve_postprocess(threshold, min_area, postprocess)

    order = read_ids_file(ids_from) if ids_from else None
    maps = open_source(source, size)
    maps.gate_by_presence(presence_threshold, presence_from)
    with Outputs(inputs=[*maps.input_paths(), ids_from, postprocess, presence_from]) as outputs:
        target = outputs.file(out, overwrite=overwrite)
        encoded, missing, extra = _encode_maps(maps, post, order, label, allow_missing,
                                               ids_from, workers)
        atomic_write_text(target, format_rle_csv(encoded, fmt, order))
    return EncodeResult(len(encoded), sum(1 for v in encoded.values() if v), missing, extra, post)


def _encode_classes(source: str | Path, out: str | Path, *, label: int | None,
                    presence_threshold: float | None, presence_from: str | Path | None,
                    **options: Any) -> ClassEncodeResult:
    from nerveseg_cli.classes import refuse_one_class_options
    from nerveseg_cli.submission.codec_classes import encode_classes

    refuse_one_class_options("encoded", label=label, presence_threshold=presence_threshold,
                             presence_from=presence_from)
    return encode_classes(source, out, **options)


def _encode_maps(maps: MapSource, post: PostProcess, order: list[str] | None,
                 label: int | None, allow_missing: bool, ids_from: str | Path | None,
                 workers: int) -> tuple[dict[str, str], list[str], list[str]]:
    """id -> RLE of every map (in ``order`` when given), the ids of ``order`` without a map
    (encoded empty), and the maps not in ``order`` (left out)."""
    source = maps.path
    available = set(maps.ids)
    missing, extra = ([], []) if order is None else compare_to_ids_from(
        available, order, source, ids_from, allow_missing, "ids", "predictions")
    ids = [i for i in (order or maps.ids) if i in available]
    reader = MaskReader(label, str(source))

    def encode(sample_id: str) -> str:
        if label is not None and sample_id not in maps.gated:
            return rle_encode(post.drop_small(maps.read_mask(sample_id, reader)))
        values = maps.read_values(sample_id, reader)
        mask = post.apply(values)
        if not maps.has_prediction_json:  # low values are no label-map hint in a prob. folder
            reader.note(values, mask)
        return rle_encode(mask)

    encoded = dict(zip(ids, thread_map(encode, ids, workers), strict=True))
    reader.finish()
    for sample_id in missing:
        encoded[sample_id] = ""
    return encoded, missing, extra


@dataclass(frozen=True)
class DecodeResult:
    format: str
    written: int
    non_empty: int

    def summary(self, out: Path) -> dict[str, Any]:
        return {"format": self.format, "masks_written": self.written,
                "non_empty": self.non_empty, "out": str(out)}


def decode_csv_to_folder(csv_path: str | Path, out: str | Path, *,
                         classes: Classes | None = None, label_maps: bool = False,
                         size: tuple[int, int] = (580, 420), overwrite: bool = False,
                         workers: int = 4, progress: Callable[[int], None] | None = None
                         ) -> DecodeResult | ClassDecodeResult:
    """``nerveseg rle-decode``: a Kaggle CSV -> one mask PNG per row; a multi-class one -> a
    folder per class (or label maps).

    Every row is validated before anything is written, so a bad CSV leaves no output.
    """
    table = read_rle_csv(csv_path)
    if table.multiclass:
        from nerveseg_cli.submission.codec_classes import decode_classes

        return decode_classes(table, out, classes=classes, size=size, label_maps=label_maps,
                              overwrite=overwrite, workers=workers, progress=progress)
    if (classes is not None and not classes.binary) or label_maps:
        raise NervesegError(f"{table.path}: a binary CSV ({table.format}: one mask per image); "
                            "--classes and --label-maps are for the long or joined form")
    runs = parse_table(table, size)
    width, height = size
    with Outputs(inputs=[csv_path]) as outputs:
        folder = outputs.folder(out, overwrite=overwrite)

        def write(sample_id: str) -> None:
            write_mask(folder / f"{sample_id}.png",
                       runs_to_mask(*runs[sample_id], height, width))

        for _ in thread_map(write, sort_ids(runs), workers):
            if progress:
                progress(1)
    return DecodeResult(table.format, len(runs), sum(1 for s, _ in runs.values() if s.size))

