"""``nerveseg workflow init``: a ready Snakemake project for a dataset (docs/workflow.md).

The project holds only what is the user's: a two-line ``Snakefile`` that includes the packaged
one (so upgrading nerveseg upgrades the rules and keeps the settings), ``config/config.yaml``
filled in from the options (the packaged template, its comments kept) and the two profiles.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerveseg_cli.errors import NervesegError, require_file, warn
from nerveseg_cli.io.outputs import Outputs, real_path
from nerveseg_cli.workflow import CONFIG_FILE, CONFIG_TEMPLATE, PROFILES

PROJECT_SNAKEFILE = """\
# A nerveseg workflow project (docs/workflow.md). The rules come with the installed nerveseg
# (upgrade it and they follow); the settings are config/config.yaml. Run it here with
#   snakemake --cores 4     or     snakemake --profile profiles/local     (SLURM: profiles/slurm)
from nerveseg_cli.workflow import snakefile

configfile: "config/config.yaml"


include: snakefile()


# What `snakemake` makes when given no target: the pipeline's outputs (TARGETS: score/,
# submission.csv ...). A rule of your own goes below; TARGETS.append(its output) adds it here.
rule all:
    input: lambda wildcards: TARGETS
    default_target: True
"""

DATA_FORMS = ("a Kaggle folder (train/, test/, sample_submission.csv), a folder of images "
              "with masks (ID.png + ID_mask.png, or images/ + masks/) or a manifest CSV")

# --smoke: what SMOKE=1 is to examples/kaggle.sh and examples/multiclass.sh (2 folds, 1 epoch,
# tiny inputs, the CPU), with one thread a job so that the folds train side by side.
SMOKE_JOB = {"threads": 1, "mem_mb": 2000, "runtime": 30}
SMOKE_BINARY = {"folds": 2, "epochs": 1, "device": "cpu",
                "train_args": "--encoder resnet18 --encoder-weights none --size 64x64 "
                              "--batch-size 4"}
SMOKE_CLASSES = {"folds": 2, "epochs": 1, "device": "cpu",
                 "train_args": "--width 4 --size 64x48 --batch-size 4"}
# several classes: examples/multiclass.sh's recipe, merge and min-area grid
CLASSES_DEFAULTS = {"recipe": "seed003-sharp-unet-multiclass", "ensemble": "mean",
                    "score.by": "class", "score.sweep_min_area": "0:2000:250"}


@dataclass
class Project:
    """What ``init_project`` wrote, and the settings it chose."""

    folder: Path
    settings: dict[str, Any]  # dotted config key -> value, as written
    files: list[Path] = field(default_factory=list)


@dataclass
class DataPaths:
    train: Path
    test: Path | None
    ids_from: Path | None
    images: int  # labelled images found in train


def find_data(data: str | Path, test: str | Path | None = None,
              ids_from: str | Path | None = None) -> DataPaths:
    """The training set, test set and sample submission that ``--data`` (and ``--test``,
    ``--ids-from``) name, each checked: a Kaggle folder gives its train/, test/ and
    sample_submission.csv; any other image set is the training set."""
    from nerveseg_cli.io.datasets import discover_images

    data = Path(data)
    if not data.exists():
        raise NervesegError(f"{data}: no such file or folder (--data takes {DATA_FORMS})")
    train = data
    if data.is_dir() and (data / "train").is_dir():  # the Kaggle layout
        train = data / "train"
        if test is None and (data / "test").is_dir():
            test = data / "test"
        if ids_from is None and (data / "sample_submission.csv").is_file():
            ids_from = data / "sample_submission.csv"
    try:
        samples = discover_images(train)
    except NervesegError as exc:
        raise NervesegError(f"{exc} (--data takes {DATA_FORMS})") from None
    labelled = sum(sample.mask is not None for sample in samples)
    if not labelled:
        raise NervesegError(f"{train}: no masks found, and the workflow trains on labelled "
                            f"images (--data takes {DATA_FORMS})")
    if test is not None:
        test = Path(test)
        discover_images(test)  # a clear error for a test set that is none
    if ids_from is not None:
        ids_from = require_file(Path(ids_from), "a sample submission CSV")
    return DataPaths(train, test, ids_from, labelled)


def init_project(folder: str | Path, data: str | Path, *, test: str | Path | None = None,
                 ids_from: str | Path | None = None, classes: str | None = None,
                 smoke: bool = False, overwrite: bool = False) -> Project:
    """Write a workflow project into ``folder``: its Snakefile, ``config/config.yaml`` for
    ``data`` (and ``classes``; ``smoke``: the tiny CPU settings of SMOKE=1) and the profiles.
    Nothing is written when a file exists (unless ``overwrite``: then the project's files are
    replaced and everything else in the folder, results included, is left alone)."""
    from nerveseg_cli.classes import parse_classes

    folder = Path(folder)
    parsed = parse_classes(classes)  # a bad --classes: its one-line error
    found = find_data(data, test, ids_from)
    settings: dict[str, Any] = {
        "data.train": _config_path(found.train, folder),
        "data.test": None if found.test is None else _config_path(found.test, folder),
        "data.ids_from": None if found.ids_from is None else _config_path(found.ids_from,
                                                                          folder),
    }
    if parsed is not None:
        written = classes.strip() if classes is not None else ""
        settings["classes"] = int(written) if written.isdigit() else ",".join(parsed.names)
        settings.update(CLASSES_DEFAULTS)
        settings["label_maps_size"] = _image_size(found.train)
    if smoke:
        settings.update(SMOKE_CLASSES if parsed is not None else SMOKE_BINARY)
        for kind in ("train", "predict", "cpu"):
            settings.update({f"resources.{kind}.{key}": value
                             for key, value in SMOKE_JOB.items()})
    contents = {
        "Snakefile": PROJECT_SNAKEFILE,
        CONFIG_FILE: render_config(CONFIG_TEMPLATE.read_text(encoding="utf-8"), settings),
        **{f"profiles/{name}/config.yaml":
           (PROFILES / name / "config.yaml").read_text(encoding="utf-8")
           for name in ("local", "slurm")},
    }
    inputs = [found.train, found.test, found.ids_from]
    with Outputs(inputs=[p for p in inputs if p is not None]) as outputs:
        # every file checked (exists? inside the data?) before the first is written
        staged = {name: outputs.file(folder / name, overwrite=overwrite) for name in contents}
        for name, text in contents.items():
            staged[name].write_text(text, encoding="utf-8")
    if importlib.util.find_spec("snakemake") is None:
        warn("snakemake is not installed here; to run the project: "
             "pip install 'nerveseg-cli[workflow]'")
    return Project(folder, settings, [folder / name for name in contents])


def _config_path(path: Path, folder: Path) -> str:
    """A data path as the config holds it: relative to the project when inside it (the
    project can move), else absolute (the workflow runs in the project folder)."""
    real, home = real_path(path), real_path(folder)
    if real.is_relative_to(home):
        return os.path.relpath(real, home)
    return str(real)


def _image_size(train: Path) -> str | None:
    """The first training image's WxH (label_maps_size), or None when it cannot be read."""
    from nerveseg_cli.io.datasets import discover_images

    try:
        from PIL import Image

        first = discover_images(train)[0]
        if first.image is None:
            return None
        with Image.open(first.image) as image:
            width, height = image.size
    except (OSError, ValueError, NervesegError, ImportError):
        return None
    return f"{width}x{height}"


# --------------------------------------------------------------------------------------------
# the config template

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]+):(?P<rest>.*)$")
_VALUE = re.compile(r'^\s*(?P<value>"[^"]*"|[^#]*?)\s*(?P<comment>#.*)?$')


def yaml_scalar(value: Any) -> str:
    """A value as a YAML flow scalar (JSON's spelling of strings is valid YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


def render_config(template: str, settings: dict[str, Any]) -> str:
    """The template with the value of each dotted key in ``settings`` replaced, its comment
    and every other line kept. Every key must be in the template."""
    lines, path, done = [], [], set()
    for line in template.splitlines():
        match = _KEY_LINE.match(line)
        if match is None or line.lstrip().startswith("#"):
            lines.append(line)
            continue
        depth = len(match["indent"]) // 2
        path = [*path[:depth], match["key"]]
        dotted = ".".join(path)
        value = _VALUE.match(match["rest"])
        if dotted in settings and value is not None and value["value"]:
            comment = f"  {value['comment']}" if value["comment"] else ""
            line = f"{match['indent']}{match['key']}: {yaml_scalar(settings[dotted])}{comment}"
            done.add(dotted)
        lines.append(line)
    missing = sorted(set(settings) - done)
    if missing:
        raise AssertionError(f"config template lacks {', '.join(missing)}")
    return "\n".join(lines) + "\n"
