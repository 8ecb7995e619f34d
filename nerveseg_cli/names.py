"""The file and folder names the formats reserve, and the check for a name that becomes one
(docs/formats.md, "Reserved names").

A class name becomes a folder beside the files a command writes (``OUT/<class>/`` next to
``OUT/classes.json`` and ``OUT/prediction.json``), so a class named ``classes.json`` would make
``predict`` fail at its end, and one named ``masks`` would turn the folder into a generic image
set. Every check of such a name goes through :func:`validate_name`: the id rules (no separator,
no leading dot, no ``..``: :func:`~nerveseg_cli.io.datasets.validate_id`), then this list,
compared ignoring case because a case-insensitive file system (macOS, Windows) holds one
``Classes.json`` and ``classes.json``.

Ids need no more than the id rules: every file made of one has an image suffix (``ID.png``,
``RANK_ID.png``, ``ID_mask.png``), which no reserved name has, and hidden names (the ``.partial``
stages, temporary files and ``.nerveseg.lock``-style files) are never ids.
"""

from __future__ import annotations

# The names nerveseg gives the files and folders it writes beside class folders, ids' maps or
# runs (tests/test_names.py checks that every module's constant is here).
RESERVED_NAMES: frozenset[str] = frozenset({
    # a run folder (runs.py, train/engine.py)
    "config.json", "model.safetensors", "last.safetensors", "state.pt", "metrics.csv",
    "metrics.png", "train.log",
    # a probability or mask folder (probmaps.py, classes.py, ensemble.py)
    "prediction.json", "presence.csv", "classes.json", "weights.csv",
    # score --out, dedupe --out, score --sweep-* (score.py, score_classes.py, dedupe.py)
    "per_image.csv", "summary.json", "subjects.csv", "sweep.csv", "classes.csv",
    "confusion.csv", "postprocess.json", "duplicates.csv", "manifest.csv",
    # demo and synth outputs (demo.py, synth.py)
    "demo.json", "folds.csv", "submission.csv", "sample_submission.csv", "train_masks.csv",
    "planted_duplicates.csv",
    # a generic image set's folders (io/datasets.py): a class folder so named makes its
    # parent read as images/ + masks/
    "images", "masks",
})
_FOLDED = {name.casefold(): name for name in RESERVED_NAMES}


def reserved_as(name: str) -> str | None:
    """The reserved name ``name`` is (ignoring case), or None."""
    return _FOLDED.get(name.casefold())


def validate_name(name: str, where: str, what: str = "class name") -> str:
    """``name`` if it may become a file or folder name of nerveseg's outputs, else an error
    naming ``where``: the id rules, and none of :data:`RESERVED_NAMES` in any case."""
    from nerveseg_cli.errors import NervesegError
    from nerveseg_cli.io.datasets import validate_id

    validate_id(name, where)
    taken = reserved_as(name)
    if taken is not None:
        same = "is" if taken == name else "is, ignoring case,"
        raise NervesegError(f"{where}: {what} {name!r} {same} a name nerveseg gives its own "
                            f"files ({taken}); choose another (docs/formats.md, \"Reserved "
                            "names\")")
    return name
