"""Train options: one set of defaults for the library and the CLI, and how the command line, a
recipe and --resume combine."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path

import pytest

from nerveseg_cli.cli.train import NOT_OPTIONS, RENAMED, train_command
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.train.options import DEFAULTS, TrainOptions
from nerveseg_cli.train.recipes import load_recipe, merge_recipe
from nerveseg_cli.train.resolution import resolve_train_options

# CLI parameters whose default means "not given" (the recipe's value, else the dataclass's).
UNSET_ON_THE_COMMAND_LINE = {"manifest", "threshold", "min_area", "loss_weights"}


def _cli_defaults() -> dict[str, object]:
    defaults = {}
    for name, parameter in inspect.signature(train_command).parameters.items():
        if name == "ctx" or name in NOT_OPTIONS:
            continue
        defaults[RENAMED.get(name, name)] = parameter.default
    return defaults


def test_every_cli_default_is_the_dataclass_default() -> None:
    cli = _cli_defaults()
    options = {f.name for f in fields(TrainOptions)} - {"recipe"}
    assert set(cli) == options  # every option is on the command line, nothing else
    for name, value in cli.items():
        if name in UNSET_ON_THE_COMMAND_LINE:
            assert value is None, name
        else:
            assert value == getattr(DEFAULTS, name), name


def test_explicit_options_win_over_the_recipe() -> None:
    resolved = resolve_train_options({"manifest": "m.csv", "lr": 0.5, "epochs": 3},
                                     {"manifest", "lr"}, recipe="seed003-sharp-unet")
    recipe = load_recipe("seed003-sharp-unet")
    assert resolved.options.lr == 0.5  # explicit
    assert resolved.options.epochs == recipe.train["epochs"]  # not explicit: the recipe's
    assert resolved.options.arch == recipe.train["arch"]
    assert resolved.options.recipe == "seed003-sharp-unet"
    assert resolved.inference is not None and resolved.inference["recipe"] == recipe.name


def test_validation_defaults_fill_in_when_not_given() -> None:
    options = resolve_train_options({"threshold": None, "min_area": None}).options
    assert (options.threshold, options.min_area) == (DEFAULTS.threshold, DEFAULTS.min_area)
    # a recipe that sets neither (nerve-default's train part) leaves the defaults
    assert "threshold" not in load_recipe("nerve-default").train
    recipe = resolve_train_options({"threshold": None, "min_area": 7}, {"min_area"},
                                   recipe="nerve-default").options
    assert (recipe.threshold, recipe.min_area) == (DEFAULTS.threshold, 7)


def test_merge_recipe_keeps_explicit_keys() -> None:
    recipe = load_recipe("nerve-default")
    values = TrainOptions(encoder="resnet18", lr=0.1).to_dict()
    merged = merge_recipe(values, recipe, {"encoder"})
    assert merged["encoder"] == "resnet18"  # explicit
    assert merged["lr"] == recipe.train["lr"]  # not explicit: the recipe wins over a default
    assert merged["recipe"] == "nerve-default"
    assert set(merged) == set(values)


def test_recipe_and_config_exclude_each_other_and_resume(tmp_path: Path) -> None:
    with pytest.raises(NervesegError, match="--recipe and --config exclude each other"):
        resolve_train_options({}, recipe="nerve-default", config_file=tmp_path / "x.json")
    with pytest.raises(NervesegError, match="--resume takes the options of the run"):
        resolve_train_options({}, recipe="nerve-default", resume=tmp_path)


def test_an_encoder_asked_of_an_architecture_without_one() -> None:
    with pytest.raises(NervesegError, match="--encoder resnet18 does not apply to --arch "
                                            "unet-plain"):
        resolve_train_options({"arch": "unet-plain", "encoder": "resnet18"},
                              {"arch", "encoder"})
    # not asked: the default encoder is ignored by such architectures
    options = resolve_train_options({"arch": "unet-plain"}, {"arch"}).options
    assert options.model_config().encoder == "none"
    with pytest.raises(NervesegError, match="--encoder resnet50 does not apply"):
        TrainOptions(arch="unet-plain", encoder="resnet50").model_config()


def test_resume_takes_the_runs_options_unless_given(tmp_path: Path) -> None:
    saved = TrainOptions(manifest="m.csv", lr=0.003, epochs=7, recipe="nerve-default")
    (tmp_path / "config.json").write_text(json.dumps({
        "model": {"arch": "unet"}, "geometry": {"mode": "pad", "width": 32, "height": 32},
        "normalization": {"mean": 0.5, "std": 0.2}, "training": saved.to_dict()}))
    given = {**DEFAULTS.to_dict(), "workers": 1, "epochs": 9}
    options = resolve_train_options(given, {"workers", "epochs"}, resume=tmp_path).options
    assert options.lr == 0.003 and options.manifest == "m.csv"  # from the run
    assert options.recipe == "nerve-default"
    assert options.workers == 1 and options.epochs == 9  # given: train() compares them


@pytest.mark.parametrize(("given", "decoders"), [
    ({"classes": "3"}, "per-class"),  # several classes on unet: a decoder per class
    ({"classes": "background,nerve,vessel", "multilabel": True}, "per-class"),
    ({"classes": "3", "decoders": "shared"}, "shared"),  # given: kept
    ({"classes": "3", "fusion": "apf"}, None),  # APF fuses one decoder's levels
    ({"classes": "3", "arch": "unetplusplus"}, None),  # per-class decoders are unet's
    ({"classes": "2"}, None),  # two classes are the binary task
    ({}, None),  # binary: unchanged
])
def test_decoders_default_per_class_for_a_unet_of_several_classes(
        given: dict[str, object], decoders: str | None) -> None:
    options = resolve_train_options(given).options
    assert options.decoders == decoders
    extra = options.model_config().extra or {}
    assert extra.get("decoders") == decoders


def test_a_resumed_run_keeps_the_decoders_it_was_trained_with(tmp_path: Path) -> None:
    """A multi-class run from before the per-class default has no decoders value: it had
    one shared decoder, and resuming it must build that again."""
    saved = TrainOptions(manifest="m.csv", classes="3")
    (tmp_path / "config.json").write_text(json.dumps({
        "model": {"arch": "unet", "classes": 3}, "geometry": {"mode": "pad", "width": 32,
                                                                "height": 32},
        "normalization": {"mean": 0.5, "std": 0.2}, "classes": ["background", "class1", "class2"],
        "training": saved.to_dict()}))
    options = resolve_train_options(DEFAULTS.to_dict(), resume=tmp_path).options
    assert options.classes == "3" and options.decoders is None


def test_save_every_reads_epochs_times_both_or_end() -> None:
    from nerveseg_cli.train.checkpoints import SavePolicy

    assert SavePolicy.parse("10m") == SavePolicy(None, 600.0)
    assert SavePolicy.parse("3") == SavePolicy(3, None)
    assert SavePolicy.parse("2, 1.5h") == SavePolicy(2, 5400.0)
    assert SavePolicy.parse("end") == SavePolicy(None, None)
    both = SavePolicy.parse("5,30s")
    assert both.epoch_due(5, 1.0) and both.epoch_due(1, 30.0) and not both.epoch_due(4, 29.0)
    assert both.time_due(30.0) and not both.time_due(29.9)
    assert not SavePolicy.parse("end").epoch_due(1000, 1e9)
    for bad in ("0", "1.5", "m", "10x", "-1", "10m,", ""):
        with pytest.raises(NervesegError, match="--save-every"):
            SavePolicy.parse(bad)


def test_bad_save_every_and_threads_are_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    from tests.conftest import assert_one_line_error, run_cli

    out = tmp_path / "run"
    assert_one_line_error(run_cli("train", tmp_path / "m.csv", "--out", out, "--save-every",
                                  "often"), "--save-every 'often'")
    assert_one_line_error(run_cli("train", tmp_path / "m.csv", "--out", out, "--threads",
                                  "-1"), "--threads")
    assert not out.exists()


def test_save_every_and_threads_may_change_on_resume() -> None:
    from nerveseg_cli.train.options import compare_for_resume

    saved = TrainOptions(save_every="10m", threads=0).to_dict()
    assert compare_for_resume(saved, {**saved, "save_every": "1", "threads": 2}) == []
    assert compare_for_resume(saved, {**saved, "lr": 1.0}) == ["lr"]
