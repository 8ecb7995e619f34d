"""Per-image map sources: one interface over mask folders, probability folders, manifests and
Kaggle CSVs, so ``score`` and ``rle-encode`` accept any of them and read one image at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nerveseg_cli.classes import Classes
from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.io.datasets import (
    discover_maps,
    id_sort_key,
    is_manifest,
    read_manifest,
    sort_ids,
    subject_of,
)
from nerveseg_cli.io.images import (
    PNG_PALETTE,
    LabelMapReader,
    MaskReader,
    png_colour_type,
    read_raw,
    to_uint8_gray,
)
from nerveseg_cli.io.kaggle_csv import parse_multiclass, parse_table, read_rle_csv, table_classes
from nerveseg_cli.io.probmaps import (
    PREDICTION_JSON,
    PRESENCE_CSV,
    is_class_folder,
    read_class_folders,
    read_presence,
)
from nerveseg_cli.io.rle import runs_to_mask


@dataclass
class MapSource:
    """id -> per-image map, read lazily from files or from validated RLE runs."""

    path: Path
    kind: str  # "folder", "manifest" or "csv"
    size: tuple[int, int]
    subjects: dict[str, str]
    files: dict[str, Path] = field(default_factory=dict)
    runs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    has_prediction_json: bool = False
    gated: set[str] = field(default_factory=set)  # ids emptied by presence gating
    origins: dict[str, str] = field(default_factory=dict)  # id -> "MANIFEST, line N"

    @contextmanager
    def _naming(self, sample_id: str) -> Iterator[None]:
        """Errors reading a manifest row's file name the manifest, the line and the id."""
        try:
            yield
        except NervesegError as exc:
            if sample_id not in self.origins:
                raise
            raise NervesegError(f"{self.origins[sample_id]} (id {sample_id}): {exc}") from None

    def gate_by_presence(self, threshold: float | None,
                         presence_from: str | Path | None = None) -> None:
        """Empty the maps of images whose presence (the folder's presence.csv, or
        ``presence_from``) is below ``threshold``."""
        if threshold is None:
            if presence_from is not None:
                raise NervesegError("--presence-from needs --presence-threshold")
            return
        file = Path(presence_from) if presence_from else self.path / PRESENCE_CSV
        if not file.is_file():
            raise NervesegError(f"{file}: no presence file; --presence-threshold needs a "
                                "probability folder with presence.csv, or --presence-from")
        presence = read_presence(file)
        absent = [i for i in self.ids if i not in presence]
        if absent:
            raise NervesegError(f"{file}: no presence for {len(absent)} images (first: "
                                f"{', '.join(absent[:5])})")
        self.gated = {i for i in self.ids if presence[i] < threshold}

    @property
    def ids(self) -> list[str]:
        return list(self.subjects)

    def input_paths(self) -> list[Path]:
        """The source and every folder its files lie in (what no output may touch)."""
        return [self.path, *{file.parent for file in self.files.values()}]

    def read_values(self, sample_id: str, reader: MaskReader | None = None) -> np.ndarray:
        """The map as uint8 0..255 (a probability map, or a 0/255 mask). A palette PNG is a
        label map, read as a mask by ``reader``'s rule (``--label``)."""
        if self.kind == "csv":
            values = self._from_runs(sample_id).astype(np.uint8) * 255
        else:
            file = self.files[sample_id]
            with self._naming(sample_id):
                if png_colour_type(file) == PNG_PALETTE:
                    values = (reader or MaskReader()).read(file).astype(np.uint8) * 255
                else:
                    values = to_uint8_gray(read_raw(file))
        return np.zeros_like(values) if sample_id in self.gated else values

    def read_mask(self, sample_id: str, reader: MaskReader) -> np.ndarray:
        """The map as a bool mask by ``reader``'s rule (> half range, or == label)."""
        if self.kind == "csv":
            return self._from_runs(sample_id)
        with self._naming(sample_id):
            return reader.read(self.files[sample_id])

    def _from_runs(self, sample_id: str) -> np.ndarray:
        width, height = self.size
        return np.ascontiguousarray(runs_to_mask(*self.runs[sample_id], height, width))


def open_source(path: str | Path, size: tuple[int, int] = (580, 420),
                subject_regex: str | None = None) -> MapSource:
    """Open a folder of maps, a manifest (its mask column) or a Kaggle CSV as a MapSource."""
    path = Path(path)
    if path.is_file():
        from nerveseg_cli.io.video import is_video, refuse_video

        if is_video(path):
            refuse_video(path)
        if path.suffix.lower() != ".csv":
            raise NervesegError(f"{path}: expected a folder, a manifest CSV or a Kaggle CSV")
        if is_manifest(path):
            samples = read_manifest(path)
            labelled = [s for s in samples if s.mask is not None]
            if not labelled:
                raise NervesegError(f"{path}: no row has a mask")
            if len(labelled) < len(samples):
                warn(f"{path}: {len(samples) - len(labelled)} rows have no mask and are skipped")
            labelled.sort(key=lambda s: id_sort_key(s.id))
            return MapSource(path, "manifest", size, {s.id: s.subject for s in labelled},
                             files={s.id: s.mask for s in labelled},
                             origins={s.id: s.origin for s in labelled})
        table = read_rle_csv(path)
        runs = parse_table(table, size)
        ids = sort_ids(runs)
        return MapSource(path, "csv", size, {i: subject_of(i, subject_regex) for i in ids},
                         runs={i: runs[i] for i in ids})
    files = discover_maps(path)
    return MapSource(path, "folder", size, {i: subject_of(i, subject_regex) for i in files},
                     files=files, has_prediction_json=(path / PREDICTION_JSON).is_file())


# --------------------------------------------------------------------------------------------
# several classes


@dataclass
class ClassSource:
    """id -> the maps of every foreground class of one image, from a folder of several classes
    (classes.json and a probability folder per class), label maps (a mask set or manifest
    whose masks hold class indices) or a multi-class Kaggle CSV."""

    path: Path
    kind: str  # "classes" (a folder per class), "labels" or "csv"
    classes: Classes
    size: tuple[int, int]
    subjects: dict[str, str]
    members: dict[str, MapSource] = field(default_factory=dict)  # "classes": per class
    labels: MapSource | None = None  # "labels": the label maps
    runs: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    has_prediction_json: bool = False

    @property
    def ids(self) -> list[str]:
        return list(self.subjects)

    def input_paths(self) -> list[Path]:
        paths = [self.path]
        for source in [*self.members.values(), *([self.labels] if self.labels else [])]:
            paths += source.input_paths()
        return paths

    def read_labels(self, sample_id: str) -> np.ndarray:
        """The image's label map (class indices; overlapping classes: the first, as
        :func:`~nerveseg_cli.evaluation.postprocess.label_map` breaks ties)."""
        if self.kind == "labels":
            reader = LabelMapReader(self.classes.count, str(self.path))
            with self.labels._naming(sample_id):  # type: ignore[union-attr]
                return reader.read(self.labels.files[sample_id])  # type: ignore[union-attr]
        values = self.read_values(sample_id)
        return np.where(values.max(axis=0) > 127, values.argmax(axis=0) + 1, 0).astype(np.uint8)

    def read_values(self, sample_id: str) -> np.ndarray:
        """(K, H, W) uint8 maps of the foreground classes (probabilities, or 0/255 masks)."""
        if self.kind == "classes":
            return np.stack([m.read_values(sample_id) for m in self.members.values()])
        if self.kind == "labels":
            labels = self.read_labels(sample_id)
            return np.stack([(labels == k).astype(np.uint8) * 255
                             for k in range(1, self.classes.count)])
        width, height = self.size
        found = self.runs[sample_id]
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        return np.stack([np.ascontiguousarray(runs_to_mask(*found.get(k, empty), height,
                                                           width)).astype(np.uint8) * 255
                         for k in range(1, self.classes.count)])


def is_multiclass(pred: str | Path, classes: Classes | None) -> bool:
    """Whether ``pred`` (scored or encoded) is a task of several classes: a folder with
    classes.json, a multi-class Kaggle CSV, or --classes of three or more."""
    path = Path(pred)
    if path.is_dir() and is_class_folder(path):
        return True
    if path.is_file() and path.suffix.lower() == ".csv" and not is_manifest(path):
        if read_rle_csv(path).multiclass:
            return True
    return classes is not None and not classes.binary


def open_class_source(path: str | Path, classes: Classes | None,
                      size: tuple[int, int] = (580, 420),
                      subject_regex: str | None = None) -> ClassSource:
    """Open maps of several classes: a folder with classes.json, a multi-class Kaggle CSV, or
    label maps (any mask set or manifest; ``classes`` then says how many there are)."""
    path = Path(path)
    if path.is_dir() and is_class_folder(path):
        found, _ = read_class_folders(path)
        if classes is not None:
            found.check_same(classes, str(path), "--classes")
        members = {name: open_source(path / name, size, subject_regex)
                   for name in found.foreground}
        first = next(iter(members.values()))
        return ClassSource(path, "classes", found, size, dict(first.subjects), members,
                           has_prediction_json=(path / PREDICTION_JSON).is_file())
    if path.is_file() and path.suffix.lower() == ".csv" and not is_manifest(path):
        table = read_rle_csv(path)
        if not table.multiclass:
            raise NervesegError(f"{path}: a binary CSV ({table.format}) where several classes "
                                "are scored; the long or joined form has a class per row")
        found = table_classes(table, classes)
        runs = parse_multiclass(table, size, found)
        return ClassSource(path, "csv", found, size,
                           {i: subject_of(i, subject_regex) for i in runs}, runs=runs)
    if classes is None:
        raise NervesegError(f"{path}: label maps of how many classes? pass --classes (a "
                            "probability folder of several classes needs none: it has a "
                            "classes.json)")
    labels = open_source(path, size, subject_regex)
    return ClassSource(path, "labels", classes, size, dict(labels.subjects), labels=labels)
