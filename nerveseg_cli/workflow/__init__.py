"""The Pipeline panel's package: the competition pipeline as a Snakemake workflow
(docs/workflow.md), shipped with the package, and ``demo`` (:mod:`~nerveseg_cli.workflow.demo`:
the whole pipeline in one process, on synthetic data).

What lies here for the workflow, in the layout of the Snakemake workflow catalogue:

* ``Snakefile``: the rules, each one plain ``nerveseg`` command. A project made by
  ``nerveseg workflow init`` holds a two-line Snakefile that includes this one, so upgrading
  nerveseg upgrades the rules and leaves the project's settings alone;
* ``schemas/config.schema.yaml``: the JSON schema of a project's ``config/config.yaml``;
* ``config/config.yaml``: the commented configuration that ``init`` fills in;
* ``profiles/local`` and ``profiles/slurm``: Snakemake profiles, copied into each project.

This module serves the Snakefile (the config check, the training tag, the resources of a
job) and :mod:`~nerveseg_cli.workflow.project` (``init``); it imports neither snakemake nor
torch, so both stay fast to load.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

WORKFLOW_DIR = Path(__file__).resolve().parent
SNAKEFILE = WORKFLOW_DIR / "Snakefile"
SCHEMA = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
CONFIG_TEMPLATE = WORKFLOW_DIR / "config" / "config.yaml"
PROFILES = WORKFLOW_DIR / "profiles"
CONFIG_FILE = "config/config.yaml"  # a project's, relative to its folder

# The settings that decide what a fold's training produces: its run folder is named after them
# (training_tag), so changing one trains new runs instead of continuing the old ones.
TRAINING_KEYS = ("classes", "subject_regex", "folds", "split_seed", "recipe", "epochs",
                 "train_args")


def snakefile() -> str:
    """The packaged Snakefile, for a project's ``include:``."""
    return str(SNAKEFILE)


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


def config_problem(config: Any, where: str = CONFIG_FILE) -> str | None:
    """The first thing wrong with a workflow configuration, as one line naming the key and its
    value (None when it is valid): the schema's checks, then the ones that span keys."""
    import jsonschema

    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        return f"{where}: {_describe(error)}"
    if not isinstance(config, dict):  # the schema says so too; for type checkers
        return None
    classes, by = config.get("classes"), (config.get("score") or {}).get("by")
    if by == "class" and classes is None:
        return f"{where}: score.by is \"class\" but classes is null (a per-class table needs " \
               "several classes; set classes, or score.by to subject or null)"
    return None


def _describe(error: Any) -> str:
    """One jsonschema error as ``KEY is VALUE; expected ...`` (or an unknown or missing key)."""
    path = [str(part) for part in error.absolute_path]
    parent = ".".join(path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        key = ".".join([*path, unknown[0]]) if unknown else parent
        from nerveseg_cli.errors import suggest

        hint = suggest(unknown[0], known) if unknown else ""
        return f"unknown key {key}{hint} (the keys here: {', '.join(known)})"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"missing key {'.'.join([*path, missing])}"
    expected = error.schema.get("description") or error.message
    key = parent or "the file"
    return f"{key} is {_shown(error.instance)}; expected {expected}"


def _shown(value: Any) -> str:
    """A config value as YAML would show it (null, true, "text", 3)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_config(config: dict[str, Any], where: str = CONFIG_FILE) -> None:
    """Check the configuration (one clear error naming the key and value) and fill in the
    defaults with ``snakemake.utils.validate``; called at the top of the Snakefile."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    problem = config_problem(config, where)
    if problem is not None:
        raise WorkflowError(problem)
    validate(config, str(SCHEMA), set_default=True)


def training_tag(config: dict[str, Any]) -> str:
    """``RECIPE-HASH``: the name of the folder of a configuration's runs. The hash covers every
    setting that changes what a fold trains on or how (TRAINING_KEYS and the training set),
    never the device, threads or resources: changing one of those continues the same runs."""
    identity = {key: config.get(key) for key in TRAINING_KEYS}
    identity["train_args"] = shlex.split(config.get("train_args") or "")
    identity["data"] = config["data"]["train"]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"{config['recipe']}-{digest}"


@functools.lru_cache(maxsize=1)
def gpus_visible() -> bool:
    """Whether this machine shows a CUDA GPU to a process (CUDA_VISIBLE_DEVICES, else
    ``nvidia-smi -L``), without loading torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return any(part.strip() and not part.strip().startswith("-")
                   for part in visible.split(","))
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return False
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def requests_gpu(device: str) -> bool:
    """Whether the GPU jobs (train, predict) ask the scheduler for a GPU: not with ``cpu``,
    always with ``cuda``/``cuda:N``, and with ``auto`` when the machine running snakemake
    shows one (on a cluster whose login node has none, write ``cuda``)."""
    if device == "cpu":
        return False
    return device != "auto" or gpus_visible()


def job_resources(config: dict[str, Any], kind: str, gpu: bool = False) -> dict[str, Any]:
    """A rule's ``resources:`` from ``config['resources'][kind]`` (train, predict, cpu):
    memory, runtime in minutes, the SLURM partition when one is set, and ``gpu=1`` for a GPU
    job of a configuration that uses one."""
    spec = config["resources"][kind]
    resources: dict[str, Any] = {"mem_mb": spec["mem_mb"], "runtime": spec["runtime"]}
    if gpu and requests_gpu(config["device"]):
        resources["gpu"] = 1
    if spec.get("slurm_partition"):
        resources["slurm_partition"] = spec["slurm_partition"]
    return resources
