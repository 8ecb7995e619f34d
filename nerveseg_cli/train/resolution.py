"""How the command line, a recipe (:mod:`.recipes`) and ``--resume`` combine into the
:class:`~.options.TrainOptions` a run trains with (:func:`resolve_train_options`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.train.options import (
    DEFAULTS,
    VALIDATION_DEFAULTS,
    TrainOptions,
    check_encoder_applies,
    default_decoders,
)
from nerveseg_cli.train.recipes import Recipe, load_recipe, merge_recipe, read_recipe_file


@dataclass(frozen=True)
class ResolvedTraining:
    """What ``train`` runs with: the options, and the recipe's prediction defaults (None
    without a recipe) for config.json."""

    options: TrainOptions
    inference: dict[str, Any] | None = None


def resolve_train_options(given: Mapping[str, Any], explicit: Collection[str] = (), *,
                          recipe: str | None = None, config_file: str | Path | None = None,
                          resume: str | Path | None = None) -> ResolvedTraining:
    """Combine the sources of train options, highest first: the ``explicit`` keys of ``given``
    (typed by the user), the recipe (``recipe`` name or ``config_file``), the run being resumed,
    then ``given``'s other values (the defaults). ``threshold`` and ``min_area`` given as None
    mean "the recipe's, else the default". Used by the CLI, ``demo`` and ``--resume``."""
    values = {**DEFAULTS.to_dict(), **given}
    explicit = set(explicit)
    inference = None
    origin: dict[str, str] = {}
    if recipe is not None or config_file is not None:
        chosen = _recipe(recipe, config_file, resume)
        values = merge_recipe(values, chosen, explicit)
        chosen.check_task(values["classes"])
        inference = chosen.inference()
        source = str(config_file) if config_file is not None else f"recipe {chosen.name}"
        origin = {key: source for key in chosen.train if key not in explicit}
        explicit |= set(chosen.train)
        _check_recipe_arch(values["arch"], origin)
    for key, default in VALIDATION_DEFAULTS.items():
        values[key] = default if values[key] is None else values[key]
    check_encoder_applies(values["arch"], values["encoder"], "encoder" in explicit)
    if resume is None:  # resolved for a new run and stored with it: a resumed run keeps its own
        values["decoders"] = default_decoders(values)
    else:
        from nerveseg_cli.io.runs import read_config

        saved = read_config(resume).training
        # Options given explicitly must match the run (train() says if not); the rest come
        # from the run.
        values = {k: (values[k] if k in explicit else saved.get(k, values[k])) for k in values}
    return ResolvedTraining(TrainOptions.from_dict(values).validate(origin), inference)


def _check_recipe_arch(arch: str, origin: Mapping[str, str]) -> None:
    """An unknown architecture in a recipe is named with the recipe."""
    if "arch" not in origin:
        return
    from nerveseg_cli.models import arch_spec

    try:
        arch_spec(arch)
    except NervesegError as exc:
        raise NervesegError(f"{origin['arch']}: train.arch: {exc}") from None


def _recipe(name: str | None, config_file: str | Path | None,
            resume: str | Path | None) -> Recipe:
    if name is not None and config_file is not None:
        raise NervesegError("--recipe and --config exclude each other")
    if resume is not None:
        raise NervesegError("--resume takes the options of the run; leave out --recipe and "
                            "--config")
    return load_recipe(name) if name is not None else read_recipe_file(config_file)
