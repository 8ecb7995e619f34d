"""Recipes: shipped and user files, explicit flags over recipe values, config.json records,
`nerveseg recipes`, and predict taking its defaults from the run's recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nerveseg_cli.io.images import read_image
from nerveseg_cli.models import check_model_config
from nerveseg_cli.train.options import TrainOptions
from nerveseg_cli.train.recipes import load_recipe, read_recipe_file, recipe_names
from tests.conftest import assert_one_line_error, run_cli, synth_with_folds

RUNTIME = ["--device", "cpu", "--workers", "1"]



@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipes_data")
    manifest = synth_with_folds(root, subjects=2, per_subject=6, test=4, size=(64, 48), seed=11)
    return {"manifest": manifest, "test": root / "data" / "test"}


def test_every_shipped_recipe_is_valid_and_documented() -> None:
    names = recipe_names()
    for wanted in ("nerve-default", "seed000-efficientunet-asme", "seed001-inception-twohead",
                   "seed002-ragcm", "seed003-sharp-unet", "seed004-fcn8s-crf"):
        assert wanted in names
    docs = (Path(__file__).resolve().parents[2] / "docs" / "recipes.md").read_text()
    for name in names:
        recipe = load_recipe(name)
        assert recipe.description and recipe.paper and recipe.reported, name
        options = TrainOptions.from_dict({**TrainOptions().to_dict(), **recipe.train})
        check_model_config(options.model_config())
        inference = recipe.inference()
        assert inference["recipe"] == name
        assert inference["crf"] is None or inference["crf"]["iterations"] > 0
        assert f"`{name}`" in docs, name


def test_seed_recipes_record_their_prediction_options() -> None:
    asme = load_recipe("seed000-efficientunet-asme").inference()
    assert (asme["tta"], asme["tta_merge"], asme["min_area"]) == ("flips", "asme", 2500)
    assert load_recipe("seed001-inception-twohead").inference()["presence_threshold"] == 0.5
    ragcm = load_recipe("seed002-ragcm").train
    assert (ragcm["context"], ragcm["fusion"], ragcm["scheduler"], ragcm["balance"]) == \
        ("rpa", "apf", "poly", "1:1")
    assert load_recipe("seed003-sharp-unet").train["arch"] == "sharp-unet"
    crf = load_recipe("seed004-fcn8s-crf").inference()["crf"]
    assert (crf["sxy_bilateral"], crf["schan"], crf["sxy_gaussian"], crf["iterations"]) == \
        (5.0, 0.01, 1.0, 10)


def test_recipe_options_land_in_config_json_and_explicit_flags_win(data: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli("train", data["manifest"], "--out", run, "--recipe", "seed003-sharp-unet",
                     "--width", "4", "--epochs", "1", "--size", "64x48", "--batch-size", "4",
                     *RUNTIME)
    assert result.exit_code == 0, (result.stderr, result.exception)
    config = json.loads((run / "config.json").read_text())
    training = config["training"]
    assert training["recipe"] == "seed003-sharp-unet"
    # from the recipe
    assert (training["arch"], training["optimizer"], training["lr"], training["loss"],
            training["patience"]) == ("sharp-unet", "adam", 0.001, "bce", 10)
    # given on the command line
    assert (training["width"], training["epochs"], training["size"]) == (4, 1, "64x48")
    assert config["model"]["extra"] == {"skip": "sharp", "width": 4, "batch_norm": False}
    assert config["inference"]["recipe"] == "seed003-sharp-unet"


def test_config_file_recipe_and_predict_defaults(data: dict[str, Path], tmp_path: Path) -> None:
    """A user's recipe trains a two-head model; predict then applies the recipe's TTA, ASME,
    presence gating, min-area and CRF unless the command line says otherwise."""
    recipe = tmp_path / "mine.json"
    recipe.write_text(json.dumps({
        "description": "tiny two-head inception net",
        "train": {"arch": "inception-unet", "width": 16, "presence_head": True, "epochs": 1,
                  "batch_size": 4, "size": "64x48", "lr": 0.01},
        "predict": {"tta": "flips", "tta_merge": "asme", "min_area": 2500,
                    "presence_threshold": 0.5, "crf": {"iterations": 2}},
    }))
    run = tmp_path / "run"
    result = run_cli("train", data["manifest"], "--out", run, "--config", recipe, *RUNTIME)
    assert result.exit_code == 0, (result.stderr, result.exception)
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["recipe"] == str(recipe)
    assert config["inference"]["crf"]["iterations"] == 2

    probs = tmp_path / "probs"
    result = run_cli("predict", run, data["test"], "--out", probs, "--masks", tmp_path / "masks",
                     *RUNTIME)
    assert result.exit_code == 0, (result.stderr, result.exception)
    options = json.loads((probs / "prediction.json").read_text())["options"]
    assert (options["tta"], options["tta_merge"], options["min_area"],
            options["presence_threshold"], options["crf"]["iterations"]) == \
        ("flips", "asme", 2500, 0.5, 2)
    assert sorted(options["from_recipe"]["options"]) == sorted(
        ["tta", "tta_merge", "min_area", "presence_threshold", "crf"])
    presence = pd.read_csv(probs / "presence.csv", dtype={"id": str})
    for row in presence.itertuples():
        if row.presence < 0.5:  # gated: an empty map
            assert not read_image(probs / f"{row.id}.png").any()
    for mask in (tmp_path / "masks").glob("*.png"):  # min-area 2500 > 64x48: all empty
        assert not read_image(mask).any()

    plain = tmp_path / "plain"
    result = run_cli("predict", run, data["test"], "--out", plain, "--tta", "none", "--no-crf",
                     "--presence-threshold", "0", "--min-area", "0", *RUNTIME)
    assert result.exit_code == 0, (result.stderr, result.exception)
    options = json.loads((plain / "prediction.json").read_text())["options"]
    assert (options["tta"], options["crf"], options["presence_threshold"],
            options["min_area"]) == ("none", None, 0.0, 0)
    assert options["from_recipe"]["options"] == ["tta_merge"]


def test_nerve_default_runs_scaled_down_and_predict_uses_its_defaults(
        data: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli("train", data["manifest"], "--out", run, "--recipe", "nerve-default",
                     "--encoder-weights", "none", "--encoder", "resnet18", "--epochs", "1",
                     "--batch-size", "4", *RUNTIME)
    assert result.exit_code == 0, (result.stderr, result.exception)
    probs = tmp_path / "probs"
    assert run_cli("predict", run, data["test"], "--out", probs, *RUNTIME).exit_code == 0
    options = json.loads((probs / "prediction.json").read_text())["options"]
    default = load_recipe("nerve-default").predict
    for key in ("tta", "presence_threshold", "min_area"):
        assert options[key] == default[key]
    assert (probs / "presence.csv").is_file()


def test_unknown_recipe_lists_the_known_ones_and_suggests(data: dict[str, Path],
                                                          tmp_path: Path) -> None:
    result = run_cli("train", data["manifest"], "--out", tmp_path / "run", "--recipe",
                     "seed03-sharp-unet", *RUNTIME)
    assert_one_line_error(result, "unknown recipe 'seed03-sharp-unet'",
                          "did you mean seed003-sharp-unet", "nerve-default")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("content", "fragments"), [
    ({"train": {"arhc": "unet"}}, ["unknown train option 'arhc'", "did you mean arch"]),
    ({"train": {"epochs": "ten"}}, ["train.epochs", "expected an integer"]),
    ({"train": {"manifest": "x.csv"}}, ["train.manifest cannot be set"]),
    ({"predict": {"tta": "flips", "crf": {"sxy": 3}}}, ["unknown CRF parameter 'sxy'"]),
    ({"predict": {"min_aera": 3}}, ["unknown predict option 'min_aera'"]),
    ({"trian": {}}, ["unknown key 'trian'"]),
    ("{not json", ["not valid JSON"]),
])
def test_bad_recipe_files_are_one_line_errors(data: dict[str, Path], tmp_path: Path,
                                              content: object, fragments: list[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = run_cli("train", data["manifest"], "--out", tmp_path / "run", "--config", path,
                     *RUNTIME)
    assert_one_line_error(result, str(path), *fragments)


def test_recipe_option_conflicts(data: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("train", data["manifest"], "--out", tmp_path / "run", "--recipe",
                     "seed002-ragcm", "--config", tmp_path / "x.json", *RUNTIME)
    assert_one_line_error(result, "--recipe and --config")
    result = run_cli("train", "--resume", tmp_path, "--recipe", "seed002-ragcm", *RUNTIME)
    assert_one_line_error(result, "--resume")
    # a recipe's encoder on an architecture without one is named like a flag
    result = run_cli("train", data["manifest"], "--out", tmp_path / "run", "--recipe",
                     "seed002-ragcm", "--arch", "unet-plain", "--context", "none", *RUNTIME)
    assert_one_line_error(result, "--encoder resnet34", "unet-plain")
    recipes = Path(__file__).resolve().parents[2] / "nerveseg_cli" / "train" / "recipes"
    assert read_recipe_file(recipes
                            / "seed002-ragcm.json").train == load_recipe("seed002-ragcm").train


def test_recipes_command_lists_one_line_each_and_prints_one() -> None:
    result = run_cli("recipes")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == recipe_names()
    result = run_cli("recipes", "--json")
    listed = json.loads(result.stdout)
    assert {r["name"] for r in listed} == set(recipe_names())
    assert {r["arch"] for r in listed} >= {"unet", "inception-unet", "ragcm", "sharp-unet",
                                           "fcn8s"}
    result = run_cli("recipes", "seed000-efficientunet-asme")
    assert json.loads(result.stdout) == load_recipe("seed000-efficientunet-asme").to_dict()
    assert_one_line_error(run_cli("recipes", "nope"), "unknown recipe 'nope'")


def test_predict_without_a_recipe_keeps_the_old_defaults(tmp_path: Path) -> None:
    from nerveseg_cli.inference.predict import PREDICT_DEFAULTS, resolve_inference

    options = resolve_inference({}, {})
    assert (options.tta, options.tta_merge, options.merge, options.asme_base,
            options.presence_threshold, options.crf, options.post.threshold,
            options.post.min_area) == ("none", "mean", "mean", 100.0, None, None, 0.5, 0)
    assert PREDICT_DEFAULTS["tta"] == "none" and options.from_recipe == []
    # a postprocess.json wins over the recipe for threshold and min-area
    post = tmp_path / "postprocess.json"
    post.write_text(json.dumps({"threshold": 0.3, "min_area": 10}))
    options = resolve_inference({}, {"threshold": 0.7, "min_area": 2500, "tta": "hflip"}, post)
    assert (options.post.threshold, options.post.min_area, options.tta) == (0.3, 10, "hflip")
    assert np.isclose(resolve_inference({"crf": True}, {}).crf["sxy_gaussian"], 3.0)
