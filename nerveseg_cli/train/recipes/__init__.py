"""Recipes: named sets of ``train`` options, with the ``predict`` options that go with them.

A recipe is a JSON file (docs/recipes.md)::

    {
      "description": "one line for `nerveseg recipes`",
      "paper": "where it comes from",
      "reported": "what the paper reports",
      "train": {"arch": "unet", "encoder": "efficientnet-b1", ...},
      "predict": {"tta": "flips", "tta_merge": "asme", "min_area": 2500, "crf": false, ...},
      "task": "binary"
    }

``task`` (optional, ``binary`` by default) is ``multiclass`` for a recipe made for several
classes, which then needs ``--classes`` (the class list belongs to the data, not the recipe).

``train`` keys are :class:`~nerveseg_cli.train.options.TrainOptions` fields (the ``nerveseg train``
flags with ``_`` for ``-``); ``predict`` keys are :data:`PREDICT_KEYS`, where ``crf`` is
``false``, ``true`` (the CRF's defaults) or an object of
:class:`~nerveseg_cli.inference.crf.CrfParams`
fields. The shipped recipes are the ``*.json`` files beside this module, named by their stem;
``nerveseg train --config FILE`` reads a user's file in the same format. ``train`` records the
recipe's name and the resolved options in config.json, and the ``predict`` part under
``inference``, which ``predict`` applies unless told otherwise.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from nerveseg_cli.errors import NervesegError, brief, require_file, suggest

PREDICT_KEYS = ("tta", "tta_merge", "merge", "asme_base", "threshold", "min_area",
                "presence_threshold", "crf")
TOP_KEYS = ("description", "paper", "reported", "train", "predict", "task")
TASKS = ("binary", "multiclass")
# train keys a recipe may not set: the data, the bookkeeping and the machine's share (threads,
# how often to save) belong to the command line
NOT_IN_RECIPES = ("manifest", "recipe", "threads", "save_every")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    paper: str
    reported: str
    train: dict[str, Any]
    predict: dict[str, Any]
    task: str = "binary"

    def check_task(self, classes: str | None) -> None:
        """A multi-class recipe needs the data's classes."""
        if self.task == "multiclass" and classes is None:
            raise NervesegError(f"recipe {self.name} is for several classes: pass --classes "
                                "(names, background first, or their count)")

    def inference(self) -> dict[str, Any]:
        """The prediction defaults stored in config.json: the predict part with ``crf`` as a
        full parameter object or None, and the recipe's name."""
        result = {k: v for k, v in self.predict.items() if k != "crf"}
        result["crf"] = crf_parameters(self.predict.get("crf"), self.name)
        result["recipe"] = self.name
        return result

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "paper": self.paper,
                "reported": self.reported, "train": self.train, "predict": self.predict,
                "task": self.task}


def crf_parameters(value: Any, source: str) -> dict[str, Any] | None:
    """A recipe's ``crf`` entry as CrfParams fields (None when off)."""
    if value in (None, False):
        return None
    from dataclasses import asdict

    from nerveseg_cli.inference.crf import CrfParams

    if value is True:
        return asdict(CrfParams())
    if not isinstance(value, dict):
        raise NervesegError(f"{source}: predict.crf must be true, false or an object of CRF "
                            f"parameters, not {value!r}")
    known = {f.name for f in fields(CrfParams)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise NervesegError(f"{source}: unknown CRF parameter {unknown[0]!r}"
                            + suggest(unknown[0], sorted(known)))
    try:
        params = CrfParams(**value).validate()
    except TypeError as exc:
        raise NervesegError(f"{source}: bad CRF parameters ({brief(exc)})") from None
    return asdict(params)


def _files() -> dict[str, Any]:
    folder = resources.files(__name__)
    return {Path(entry.name).stem: entry for entry in folder.iterdir()
            if entry.name.endswith(".json")}


def recipe_names() -> list[str]:
    return sorted(_files())


def load_recipe(name: str, validate: bool = True) -> Recipe:
    """A shipped recipe by name; an unknown name lists the known ones."""
    files = _files()
    if name not in files:
        names = sorted(files)
        raise NervesegError(f"unknown recipe {name!r}" + suggest(name, names)
                            + f" (known: {', '.join(names)})")
    return parse_recipe(files[name].read_text(encoding="utf-8"), name, f"recipe {name}",
                        validate)


def read_recipe_file(path: str | Path, validate: bool = True) -> Recipe:
    """A user's recipe file (``train --config FILE``); its name is its path."""
    path = Path(path)
    if path.is_dir():
        require_file(path, "a recipe file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NervesegError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NervesegError(f"{path}: unreadable recipe file ({brief(exc)})") from None
    return parse_recipe(text, str(path), str(path), validate)


def shipped_recipes() -> list[Recipe]:
    return [load_recipe(name, validate=False) for name in recipe_names()]


def parse_recipe(text: str, name: str, source: str, validate: bool = True) -> Recipe:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise NervesegError(f"{source}: not valid JSON ({brief(exc)})") from None
    if not isinstance(data, dict):
        raise NervesegError(f"{source}: a recipe is a JSON object")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise NervesegError(f"{source}: unknown key {unknown[0]!r} (a recipe has "
                            f"{', '.join(TOP_KEYS)})")
    train, predict = data.get("train", {}), data.get("predict", {})
    if not isinstance(train, dict) or not isinstance(predict, dict):
        raise NervesegError(f"{source}: train and predict must be JSON objects")
    task = data.get("task", "binary")
    if task not in TASKS:
        raise NervesegError(f"{source}: task {task!r} is not one of {', '.join(TASKS)}")
    recipe = Recipe(name, str(data.get("description", "")), str(data.get("paper", "")),
                    str(data.get("reported", "")), train, predict, task)
    if validate:
        check_train_options(train, source)
        check_predict_options(predict, source)
    return recipe


def check_train_options(train: dict[str, Any], source: str) -> None:
    """Every key a TrainOptions field, every value of that field's kind."""
    from nerveseg_cli.train.options import TrainOptions

    defaults = {f.name: f.default for f in fields(TrainOptions)}
    for key, value in train.items():
        if key in NOT_IN_RECIPES:
            raise NervesegError(f"{source}: train.{key} cannot be set by a recipe")
        if key not in defaults:
            raise NervesegError(f"{source}: unknown train option {key!r}"
                                + suggest(key, sorted(defaults)))
        _check_kind(value, defaults[key], f"{source}: train.{key}")


def check_predict_options(predict: dict[str, Any], source: str) -> None:
    from nerveseg_cli.inference.predict import PREDICT_DEFAULTS, check_inference_values

    for key, value in predict.items():
        if key not in PREDICT_KEYS:
            raise NervesegError(f"{source}: unknown predict option {key!r}"
                                + suggest(key, list(PREDICT_KEYS)))
        if key == "crf":
            crf_parameters(value, source)
        else:
            _check_kind(value, PREDICT_DEFAULTS[key], f"{source}: predict.{key}")
    check_inference_values({k: v for k, v in predict.items() if k != "crf"}, source)


def _check_kind(value: Any, default: Any, where: str) -> None:
    if value is None or default is None or isinstance(default, list):
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    else:
        ok, kind = isinstance(value, type(default)), f"a {type(default).__name__}"
    if not ok:
        raise NervesegError(f"{where} = {value!r}: expected {kind}")


def merge_recipe(values: dict[str, Any], recipe: Recipe, explicit: set[str]) -> dict[str, Any]:
    """Options from the recipe under the ones given explicitly: ``values`` (TrainOptions
    fields) with every recipe option whose key is not in ``explicit``."""
    merged = dict(values)
    for key, value in recipe.train.items():
        if key not in explicit:
            merged[key] = value
    merged["recipe"] = recipe.name
    return merged
