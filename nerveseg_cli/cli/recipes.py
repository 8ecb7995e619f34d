"""``nerveseg recipes``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_TRAINING, command
from nerveseg_cli.cli._common import JsonOutput, print_json, stdout


@command("recipes", PANEL_TRAINING)
def recipes_command(
    name: Annotated[str | None, typer.Argument(
        help="Print this recipe's JSON (a starting point for `train --config FILE`).")] = None,
    json_output: JsonOutput = False,
) -> None:
    """List the shipped training recipes, one line each (docs/recipes.md)."""
    from nerveseg_cli.train.recipes import load_recipe, shipped_recipes

    if name is not None:
        text = json.dumps(load_recipe(name).to_dict(), indent=2) + "\n"
        typer.echo(text, nl=False)
        return
    recipes = shipped_recipes()
    if json_output:
        print_json([{"name": r.name, "arch": r.train.get("arch", "unet"),
                     "description": r.description} for r in recipes])
        return
    width = max(len(r.name) for r in recipes)
    for r in recipes:
        stdout.print(f"{r.name:<{width}}  {r.description}", markup=False, highlight=False,
                     soft_wrap=True)
