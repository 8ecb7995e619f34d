"""Hostile input to the model commands (``train``, ``predict``, ``ensemble``, ``crf``,
``recipes``): every case must keep the bad-input contract of docs/formats.md ("Conventions"),
checked by ``tests.hostile.assert_refused``: exit code 2, one ``error:`` line naming the file
(and what is wrong), no traceback, and the workspace byte for byte as it was, so no output
folder, ``prediction.json``, ``config.json`` or hidden ``.partial`` file is left behind.

Each table holds one command's cases: outputs that are (or lie inside, or hold) an input, also
through a symlink; ``--resume`` with other options than the folder was written with; values out
of range; damaged run folders, training states and weight files; and failed runs that must
leave nothing (and, for predict, a run failing after some maps leaves only what --resume
uses). Train cases use tiny settings so a case that is wrongly accepted ends quickly.

A case that fails because of a library bug is fixed in the library, never weakened here.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.hostile import Case, run_case

TINY = ("--arch", "unet-plain", "--width", "2", "--epochs", "1", "--batch-size", "8",
        "--device", "cpu", "--workers", "1")
CPU = ("--device", "cpu", "--workers", "1")
TORCH_ADVICE = ("weights_only", "PyTorch 2.6")


def table(*items):
    """``@table(...)``: parametrise a test over cases (plain, or wrapped by :func:`bug`)."""
    return pytest.mark.parametrize(
        "case", [item if not isinstance(item, Case) else pytest.param(item, id=item.name)
                 for item in items])


def check(case: Case, workspace: Path) -> None:
    """The bad-input contract, and no text of ``case.options["absent"]`` on stderr."""
    result = run_case(case, workspace)
    for text in case.options.get("absent", ()):
        assert text not in result.stderr, (text, result.stderr)


# --------------------------------------------------------------------------------------------
# helpers that damage or add inputs inside a workspace


def edited_run(ws: Path, edit: Callable[[dict], object], name: str = "badrun") -> Path:
    """A copy of ``run/`` whose config.json is ``edit(config)`` (the dict changed in place)."""
    run = ws / name
    shutil.copytree(ws / "run", run)
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))
    return run


def run_copy(ws: Path, name: str = "badrun") -> Path:
    run = ws / name
    shutil.copytree(ws / "run", run)
    return run


def link(ws: Path, name: str, target: str) -> Path:
    """A symlink ``ws/name`` to ``ws/target``."""
    path = ws / name
    path.symlink_to(ws / target, target_is_directory=True)
    return path


def crf_folder(ws: Path, name: str = "crfout") -> Path:
    """A complete crf output of ``probs/`` (default options)."""
    out = ws / name
    result = run_cli("crf", ws / "probs", ws / "data" / "test", "--out", out, "--workers", "1")
    assert result.exit_code == 0, (result.stderr, result.exception)
    return out


def corrupt_set(ws: Path) -> Path:
    """``data/test2``: a corrupt ``1.png`` (sorts first), then a readable ``2.tif``."""
    folder = ws / "data" / "test2"
    folder.mkdir()
    (folder / "1.png").write_bytes(b"not a png")
    shutil.copy(ws / "data" / "test" / "2.tif", folder / "2.tif")
    return folder


def local_probs(ws: Path) -> Path:
    """``probs/`` with its prediction.json naming this workspace's run and images (the copy
    names the session's base folders), so that --resume compares like with like."""
    path = ws / "probs" / "prediction.json"
    record = json.loads(path.read_text())
    record["inputs"] = {"runs": [str(ws / "run")], "images": str(ws / "data" / "test")}
    path.write_text(json.dumps(record, indent=2))
    return ws / "probs"


def local_run(ws: Path) -> Path:
    """``run/`` with its config.json naming this workspace's manifest (see local_probs)."""
    path = ws / "run" / "config.json"
    config = json.loads(path.read_text())
    config["training"]["manifest"] = str(ws / "folds.csv")
    path.write_text(json.dumps(config, indent=2))
    return ws / "run"


def probs_copy(ws: Path, name: str = "probs2") -> Path:
    folder = ws / name
    shutil.copytree(ws / "probs", folder)
    return folder


def sixteen_bit(ws: Path, name: str = "bad") -> Path:
    """A copy of ``probs/`` whose ``1.png`` is a 16-bit PNG."""
    folder = probs_copy(ws, name)
    values = cv2.imread(str(folder / "1.png"), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257
    (folder / "1.png").unlink()
    assert cv2.imwrite(str(folder / "1.png"), values)
    return folder


def resized_map(ws: Path, name: str = "bad") -> Path:
    """A copy of ``probs/`` whose ``1.png`` has another size than its image."""
    folder = probs_copy(ws, name)
    values = cv2.imread(str(folder / "1.png"), cv2.IMREAD_UNCHANGED)
    assert cv2.imwrite(str(folder / "1.png"), cv2.resize(values, (32, 24)))
    return folder


def corrupt_map(ws: Path, name: str = "bad") -> Path:
    folder = probs_copy(ws, name)
    (folder / "1.png").write_bytes(b"not a png")
    return folder


def write_file(ws: Path, name: str, content: bytes) -> Path:
    path = ws / name
    path.write_bytes(content)
    return path


def no_fold_column(ws: Path) -> Path:
    lines = (ws / "folds.csv").read_text().splitlines()
    path = ws / "nofold.csv"
    path.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in lines))
    return path


def truncated_weights(ws: Path) -> Path:
    run = run_copy(ws)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    return run


def replaced_state(ws: Path, content: bytes) -> Path:
    (ws / "run" / "state.pt").write_bytes(content)
    return ws / "run"


def images_subset(ws: Path, drop: str, name: str = "subset") -> Path:
    """A copy of ``data/test`` without image ``drop``."""
    folder = ws / name
    shutil.copytree(ws / "data" / "test", folder)
    (folder / f"{drop}.tif").unlink()
    return folder


def empty_folder(ws: Path, name: str) -> Path:
    folder = ws / name
    folder.mkdir()
    return folder


def set_path(config: dict, keys: tuple[str, ...], value: object) -> None:
    for key in keys[:-1]:
        config = config[key]
    config[keys[-1]] = value


# --------------------------------------------------------------------------------------------
# train


def train_args(ws: Path, *extra: str | Path) -> list[str | Path]:
    return ["train", ws / "folds.csv", "--out", ws / "run2", *TINY, *extra]


TRAIN = (
    # outputs that are, lie inside, or hold an input
    Case("out_inside_images",
             lambda ws: ["train", ws / "folds.csv", "--out", ws / "data" / "train" / "run2",
                         *TINY],
             ("{ws}/data/train/run2", "lies inside the input {ws}/data/train")),
    Case("out_inside_images_through_symlink",
             lambda ws: ["train", ws / "folds.csv", "--out",
                         link(ws, "images", "data/train") / "r", *TINY],
             ("{ws}/images/r", "lies inside the input {ws}/data/train")),
    Case("out_holds_images",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "data", *TINY],
         ("{ws}/data", "not empty", "--overwrite")),
    Case("out_holds_images_with_overwrite",
             lambda ws: ["train", ws / "folds.csv", "--out", ws / "data", "--overwrite", *TINY],
             ("{ws}/data", "holds the input {ws}/data/train")),
    Case("out_is_the_manifest",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "folds.csv", *TINY],
         ("{ws}/folds.csv", "is also an input")),
    Case("out_is_an_existing_run",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run", *TINY],
         ("{ws}/run", "--overwrite")),
    # optimisation values that crashed or were accepted
    Case("lr_negative", lambda ws: train_args(ws, "--lr", "-1"), ("--lr -1",)),
    Case("lr_nan", lambda ws: train_args(ws, "--lr", "nan"), ("--lr nan",)),
    Case("lr_inf", lambda ws: train_args(ws, "--lr", "inf"), ("--lr inf",)),
    Case("lr_zero", lambda ws: train_args(ws, "--lr", "0"), ("--lr 0",)),
    Case("momentum_above_one", lambda ws: train_args(ws, "--momentum", "1.5"),
         ("--momentum 1.5",)),
    Case("weight_decay_negative", lambda ws: train_args(ws, "--weight-decay", "-1"),
         ("--weight-decay -1",)),
    Case("step_gamma_zero", lambda ws: train_args(ws, "--scheduler", "step", "--step-gamma", "0"),
         ("--step-gamma 0",)),
    Case("warmup_nan", lambda ws: train_args(ws, "--warmup-epochs", "nan"), ("--warmup-epochs",)),
    Case("grad_clip_nan", lambda ws: train_args(ws, "--grad-clip", "nan"), ("--grad-clip",)),
    Case("scheduler_unknown", lambda ws: train_args(ws, "--scheduler", "linear"),
         ("--scheduler", "linear")),
    Case("optimizer_unknown", lambda ws: train_args(ws, "--optimizer", "lion"),
             ("--optimizer", "lion")),
    Case("loss_unknown_term", lambda ws: train_args(ws, "--loss", "dice+foo"),
         ("--loss", "foo")),
    Case("loss_empty", lambda ws: train_args(ws, "--loss", ""), ("--loss",)),
    Case("epochs_zero", lambda ws: train_args(ws, "--epochs", "0"), ("--epochs",)),
    Case("batch_size_zero", lambda ws: train_args(ws, "--batch-size", "0"), ("--batch-size",)),
    Case("threshold_above_one", lambda ws: train_args(ws, "--threshold", "2"), ("--threshold",)),
    Case("amp_unknown", lambda ws: train_args(ws, "--amp", "fp8"), ("--amp", "fp8")),
    Case("device_unknown", lambda ws: train_args(ws, "--device", "tpu"), ("--device", "tpu")),
    Case("unknown_option", lambda ws: train_args(ws, "--frobnicate"), ("--frobnicate",)),
    # data and geometry
    Case("fold_missing", lambda ws: train_args(ws, "--fold", "7"),
             ("{ws}/folds.csv", "fold 7 has no images")),
    Case("fold_not_a_number", lambda ws: train_args(ws, "--fold", "x"), ("--fold 'x'",)),
    Case("size_not_multiple_of_32", lambda ws: train_args(ws, "--size", "100x100"),
             ("--size 100x100", "is not a multiple of")),
    Case("size_zero", lambda ws: train_args(ws, "--size", "0x0"), ("--size '0x0'",)),
    Case("size_garbage", lambda ws: train_args(ws, "--size", "big"), ("--size 'big'",)),
    Case("balance_zero_negatives", lambda ws: train_args(ws, "--balance", "1:0"),
         ("--balance '1:0'",)),
    Case("balance_garbage", lambda ws: train_args(ws, "--balance", "x"), ("--balance 'x'",)),
    Case("label_absent", lambda ws: train_args(ws, "--label", "9"),
             ("{ws}/folds.csv", "no pixel of any mask equals --label 9")),
    Case("manifest_missing",
             lambda ws: ["train", ws / "nothing.csv", "--out", ws / "run2", *TINY],
             ("{ws}/nothing.csv",)),
    Case("manifest_without_fold_column",
             lambda ws: ["train", no_fold_column(ws), "--out", ws / "run2", *TINY],
             ("{ws}/nofold.csv", "no fold column")),
    # model
    Case("arch_unknown",
             lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unett",
                         "--epochs", "1", "--device", "cpu", "--workers", "1"],
             ("unknown architecture 'unett'", "did you mean unet")),
    Case("width_zero", lambda ws: train_args(ws, "--width", "0"), ("--width",)),
    Case("encoder_weights_for_a_from_scratch_arch",
             lambda ws: train_args(ws, "--encoder-weights", ws / "folds.csv"),
             ("--encoder-weights {ws}/folds.csv", "unet-plain")),
    Case("encoder_weights_plain_pickle",
             lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unet",
                         "--encoder", "resnet18", "--encoder-weights",
                         write_file(ws, "enc.pt", pickle.dumps(argparse.Namespace(weight=1))),
                         "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                         "--workers", "1"],
             ("{ws}/enc.pt",), {"absent": TORCH_ADVICE}),
    Case("encoder_weights_garbage",
             lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unet",
                         "--encoder", "resnet18", "--encoder-weights",
                         write_file(ws, "enc.pt", b"garbage"),
                         "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                         "--workers", "1"],
             ("{ws}/enc.pt",), {"absent": TORCH_ADVICE}),
    Case("encoder_weights_missing_file",
             lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unet",
                         "--encoder", "resnet18", "--encoder-weights", ws / "enc.pt",
                         "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                         "--workers", "1"],
             ("{ws}/enc.pt", "not found")),
    # recipes and configs
    Case("recipe_unknown", lambda ws: train_args(ws, "--recipe", "nerve-defualt"),
         ("nerve-defualt", "nerve-default")),
    Case("config_invalid_json",
         lambda ws: train_args(ws, "--config", write_file(ws, "recipe.json", b"{not json")),
         ("{ws}/recipe.json", "not valid JSON")),
    Case("config_unknown_key",
         lambda ws: train_args(ws, "--config",
                               write_file(ws, "recipe.json", b'{"learning_rat": 0.1}')),
         ("{ws}/recipe.json", "learning_rat")),
    Case("config_train_not_an_object",
         lambda ws: train_args(ws, "--config", write_file(ws, "recipe.json", b'{"train": [1]}')),
         ("{ws}/recipe.json",)),
    Case("config_lr_negative",
             lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--config",
                         write_file(ws, "recipe.json",
                                    b'{"train": {"lr": -1, "arch": "unet-plain", "width": 2}}'),
                         "--epochs", "1", "--device", "cpu", "--workers", "1"],
             ("{ws}/recipe.json", "lr")),
    Case("config_arch_unknown",
             lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--config",
                         write_file(ws, "recipe.json", b'{"train": {"arch": "unett"}}'),
                         "--epochs", "1", "--device", "cpu", "--workers", "1"],
             ("{ws}/recipe.json", "unett")),
    Case("config_predict_tta_unknown",
             lambda ws: train_args(ws, "--config", write_file(
                 ws, "recipe.json", b'{"train": {}, "predict": {"tta": "rotate"}}')),
             ("{ws}/recipe.json", "rotate")),
    Case("config_sets_threads",
             lambda ws: train_args(ws, "--config", write_file(
                 ws, "recipe.json", b'{"train": {"threads": 1}}')),
             ("{ws}/recipe.json", "train.threads cannot be set by a recipe")),
    Case("config_sets_save_every",
             lambda ws: train_args(ws, "--config", write_file(
                 ws, "recipe.json", b'{"train": {"save_every": "1"}}')),
             ("{ws}/recipe.json", "train.save_every")),
    # resume
    Case("resume_state_garbage",
             lambda ws: ["train", "--resume", replaced_state(ws, b"\x00garbage" * 10)],
             ("{ws}/run/state.pt", "not a nerveseg training state"),
             {"absent": TORCH_ADVICE}),
    Case("resume_state_plain_pickle",
             lambda ws: ["train", "--resume", replaced_state(ws, pickle.dumps({"a": 1}))],
             ("{ws}/run/state.pt", "not a nerveseg training state"),
             {"absent": TORCH_ADVICE}),
    Case("resume_state_missing",
         lambda ws: ["train", "--resume", (lambda run: ((run / "state.pt").unlink(), run)[1])(
             ws / "run")],
         ("{ws}/run", "state.pt")),
    Case("resume_other_lr", lambda ws: ["train", "--resume", ws / "run", "--lr", "0.5"],
         ("{ws}/run", "cannot resume with different options", "lr (0.002 -> 0.5)")),
    Case("resume_other_manifest",
         lambda ws: ["train", no_fold_column(ws), "--resume", ws / "run"],
         ("{ws}/run", "cannot resume with different options", "manifest")),
    Case("resume_not_a_run", lambda ws: ["train", "--resume", ws / "probs"],
         ("{ws}/probs", "not a run folder")),
    Case("resume_config_invalid_json",
         lambda ws: ["train", "--resume", write_file(ws, "run/config.json", b"{").parent],
         ("{ws}/run/config.json", "not a nerveseg run config")),
)


@table(*TRAIN)
def test_train_refuses(case: Case, workspace: Path) -> None:
    check(case, workspace)


# --------------------------------------------------------------------------------------------
# predict


def predict_args(ws: Path, *extra: str | Path, run: Path | None = None,
                 images: Path | None = None, out: Path | None = None) -> list[str | Path]:
    return ["predict", run or ws / "run", images or ws / "data" / "test",
            "--out", out or ws / "maps", *CPU, *extra]


def bad_config(edit: Callable[[dict], object]) -> Callable[[Path], list[str | Path]]:
    return lambda ws: predict_args(ws, run=edited_run(ws, edit))


PREDICT = (
    # outputs that are, lie inside, or hold an input
    Case("out_is_images", lambda ws: predict_args(ws, out=ws / "data" / "test"),
         ("{ws}/data/test", "is also an input")),
    Case("out_inside_run", lambda ws: predict_args(ws, out=ws / "run" / "maps"),
         ("{ws}/run/maps", "lies inside the input {ws}/run")),
    Case("out_inside_images", lambda ws: predict_args(ws, out=ws / "data" / "test" / "maps"),
         ("{ws}/data/test/maps", "lies inside the input {ws}/data/test")),
    Case("out_holds_run", lambda ws: predict_args(ws, out=ws),
         ("holds the input",)),
    Case("out_is_images_through_symlink",
         lambda ws: predict_args(ws, out=link(ws, "images", "data/test")),
         ("{ws}/images", "is also an input")),
    Case("out_inside_run_through_symlink",
         lambda ws: predict_args(ws, out=link(ws, "model", "run") / "maps"),
         ("{ws}/model/maps", "lies inside the input {ws}/run")),
    Case("images_through_symlink_out_is_images",
         lambda ws: predict_args(ws, images=link(ws, "images", "data/test"),
                                 out=ws / "data" / "test"),
         ("{ws}/data/test", "is also an input")),
    Case("masks_is_images", lambda ws: predict_args(ws, "--masks", ws / "data" / "test"),
         ("{ws}/data/test", "is also an input")),
    Case("masks_inside_run", lambda ws: predict_args(ws, "--masks", ws / "run" / "m"),
         ("{ws}/run/m", "lies inside the input {ws}/run")),
    Case("masks_is_out", lambda ws: predict_args(ws, "--masks", ws / "maps"),
             ("{ws}/maps",)),
    Case("out_is_an_existing_file",
         lambda ws: predict_args(ws, out=write_file(ws, "notes.txt", b"notes\n")),
         ("{ws}/notes.txt", "not a folder")),
    Case("out_not_empty", lambda ws: predict_args(ws, out=ws / "probs"),
         ("{ws}/probs", "--overwrite")),
    Case("out_not_empty_with_masks_leaves_no_masks_folder",
         lambda ws: predict_args(ws, "--masks", ws / "m", out=ws / "probs"),
         ("{ws}/probs", "--overwrite")),
    # --resume with other options, inputs or another command's folder
    Case("resume_other_tta",
         lambda ws: predict_args(ws, "--resume", "--tta", "flips", out=ws / "probs"),
         ("{ws}/probs", "was written with --tta none, not flips")),
    Case("resume_other_threshold",
         lambda ws: predict_args(ws, "--resume", "--threshold", "0.3", out=ws / "probs"),
         ("{ws}/probs", "was written with --threshold 0.5, not 0.3")),
    Case("resume_other_merge",
         lambda ws: predict_args(ws, "--resume", "--merge", "asme", out=ws / "probs"),
         ("{ws}/probs", "was written with --merge mean, not asme")),
    Case("resume_other_images",
         lambda ws: predict_args(ws, "--resume", images=ws / "data" / "train",
                                 out=local_probs(ws)),
         ("{ws}/probs", "was made from images", "{ws}/data/train")),
    Case("resume_other_runs",
         lambda ws: predict_args(ws, "--resume", run=run_copy(ws), out=local_probs(ws)),
         ("{ws}/probs", "was made from runs", "{ws}/badrun")),
    Case("resume_into_crf_folder",
         lambda ws: predict_args(ws, "--resume", out=crf_folder(ws)),
         ("{ws}/crfout", "was written by 'crf'")),
    Case("resume_prediction_json_invalid",
         lambda ws: predict_args(ws, "--resume", out=write_file(
             probs_copy(ws), "prediction.json", b"{").parent),
         ("{ws}/probs2/prediction.json", "not valid JSON")),
    # run folders that cannot be right
    Case("config_geometry_width_zero", bad_config(lambda c: set_path(c, ("geometry", "width"), 0)),
         ("{ws}/badrun/config.json", "not a nerveseg run config", "geometry 0x48")),
    Case("config_geometry_mode_unknown",
         bad_config(lambda c: set_path(c, ("geometry", "mode"), "stretch")),
         ("{ws}/badrun/config.json", "not a nerveseg run config", "stretch")),
    Case("config_std_zero", bad_config(lambda c: set_path(c, ("normalization", "std"), 0)),
         ("{ws}/badrun/config.json", "not a nerveseg run config", "std")),
    Case("config_std_nan",
         bad_config(lambda c: set_path(c, ("normalization", "std"), float("nan"))),
         ("{ws}/badrun/config.json", "not a nerveseg run config", "std")),
    Case("config_mean_string",
         bad_config(lambda c: set_path(c, ("normalization", "mean"), "dark")),
         ("{ws}/badrun/config.json", "not a nerveseg run config", "dark")),
    Case("config_without_model", bad_config(lambda c: c.pop("model")),
         ("{ws}/badrun/config.json", "not a nerveseg run config", "model")),
    Case("config_arch_unknown", bad_config(lambda c: set_path(c, ("model", "arch"), "unett")),
             ("{ws}/badrun/config.json", "unett")),
    Case("config_in_channels_zero",
             bad_config(lambda c: set_path(c, ("model", "in_channels"), 0)),
             ("{ws}/badrun/config.json", "in_channels")),
    Case("config_width_other_than_weights",
         bad_config(lambda c: set_path(c, ("model", "extra", "width"), 4)),
         ("{ws}/badrun/model.safetensors", "do not fit")),
    Case("config_invalid_json",
         lambda ws: predict_args(ws, run=write_file(run_copy(ws), "config.json", b"{").parent),
         ("{ws}/badrun/config.json", "not a nerveseg run config")),
    Case("config_a_list",
         lambda ws: predict_args(ws, run=write_file(run_copy(ws), "config.json", b"[1]").parent),
         ("{ws}/badrun/config.json", "not a nerveseg run config")),
    Case("weights_missing",
         lambda ws: predict_args(ws, run=(lambda r: ((r / "model.safetensors").unlink(), r)[1])(
             run_copy(ws))),
         ("{ws}/badrun/model.safetensors", "missing")),
    Case("weights_truncated", lambda ws: predict_args(ws, run=truncated_weights(ws)),
         ("{ws}/badrun/model.safetensors", "unreadable weights")),
    Case("weights_are_a_pickle",
         lambda ws: predict_args(ws, run=write_file(run_copy(ws), "model.safetensors",
                                                    pickle.dumps({"a": 1})).parent),
         ("{ws}/badrun/model.safetensors", "unreadable weights")),
    Case("runs_disagree_on_channels",
         lambda ws: ["predict", ws / "run",
                     edited_run(ws, lambda c: set_path(c, ("model", "in_channels"), 3)),
                     ws / "data" / "test", "--out", ws / "maps", *CPU],
         ("{ws}/badrun",)),
    Case("run_missing", lambda ws: predict_args(ws, run=ws / "norun"),
         ("{ws}/norun", "not a run folder")),
    Case("run_is_a_file", lambda ws: predict_args(ws, run=ws / "folds.csv"),
         ("{ws}/folds.csv", "not a run folder")),
    # out of fold
    Case("out_of_fold_without_manifest", lambda ws: predict_args(ws, "--out-of-fold"),
         ("{ws}/data/test", "--out-of-fold")),
    Case("out_of_fold_fold_without_run",
         lambda ws: predict_args(ws, "--out-of-fold", run=local_run(ws),
                                 images=ws / "folds.csv"),
         ("{ws}/folds.csv", "fold(s) 1")),
    Case("out_of_fold_two_runs_of_one_fold",
         lambda ws: ["predict", local_run(ws), run_copy(ws), ws / "folds.csv", "--out-of-fold",
                     "--out", ws / "maps", *CPU],
         ("{ws}/badrun", "{ws}/run", "fold 0")),
    # failed runs leave nothing
    Case("corrupt_image_first", lambda ws: predict_args(ws, images=corrupt_set(ws)),
         ("{ws}/data/test2/1.png", "not a readable image")),
    Case("corrupt_image_first_with_masks",
         lambda ws: predict_args(ws, "--masks", ws / "m", images=corrupt_set(ws)),
         ("{ws}/data/test2/1.png", "not a readable image")),
    Case("images_empty", lambda ws: predict_args(ws, images=empty_folder(ws, "empty")),
         ("{ws}/empty", "no images")),
    Case("postprocess_invalid_json",
         lambda ws: predict_args(ws, "--masks", ws / "m", "--postprocess",
                                 write_file(ws, "post.json", b"{")),
         ("{ws}/post.json",)),
    Case("presence_from_garbage",
         lambda ws: predict_args(ws, "--presence-threshold", "0.5", "--presence-from",
                                 write_file(ws, "presence.csv", b"who,what\n1,2\n")),
         ("{ws}/presence.csv", "id,presence")),
    Case("presence_threshold_without_presence",
             lambda ws: predict_args(ws, "--presence-threshold", "0.5"),
             ("--presence-threshold",)),
    # option values out of range
    Case("batch_size_zero", lambda ws: predict_args(ws, "--batch-size", "0"), ("--batch-size",)),
    Case("part_beyond_count", lambda ws: predict_args(ws, "--part", "3/2"), ("--part '3/2'",)),
    Case("part_zero", lambda ws: predict_args(ws, "--part", "0/2"), ("--part '0/2'",)),
    Case("part_garbage", lambda ws: predict_args(ws, "--part", "a/b"), ("--part 'a/b'",)),
    Case("tta_unknown", lambda ws: predict_args(ws, "--tta", "rotate"), ("--tta", "rotate")),
    Case("tta_merge_unknown", lambda ws: predict_args(ws, "--tta-merge", "median"),
         ("--tta-merge", "median")),
    Case("merge_unknown", lambda ws: predict_args(ws, "--merge", "median"),
         ("--merge", "median")),
    Case("asme_base_nan",
         lambda ws: predict_args(ws, "--tta", "flips", "--tta-merge", "asme", "--asme-base",
                                 "nan"),
         ("--asme-base nan", "a positive number")),
    Case("asme_base_nan_unused", lambda ws: predict_args(ws, "--asme-base", "nan"),
             ("nan",)),
    Case("asme_base_negative",
         lambda ws: predict_args(ws, "--tta", "hflip", "--tta-merge", "asme", "--asme-base",
                                 "-1"),
         ("--asme-base -1", "a positive number")),
    Case("threshold_above_one", lambda ws: predict_args(ws, "--threshold", "1.5"),
         ("--threshold",)),
    Case("min_area_negative", lambda ws: predict_args(ws, "--min-area", "-1"), ("--min-area",)),
    Case("amp_unknown", lambda ws: predict_args(ws, "--amp", "fp8"), ("--amp", "fp8")),
    Case("device_unknown", lambda ws: predict_args(ws, "--device", "tpu"), ("--device", "tpu")),
    Case("unknown_option", lambda ws: predict_args(ws, "--frobnicate"), ("--frobnicate",)),
    Case("no_out", lambda ws: ["predict", ws / "run", ws / "data" / "test", *CPU], ("--out",)),
)


@table(*PREDICT)
def test_predict_refuses(case: Case, workspace: Path) -> None:
    check(case, workspace)


def test_predict_failing_late_leaves_only_what_resume_uses(workspace: Path) -> None:
    """A corrupt image that sorts last fails the run after the first map may be written: the
    error keeps the contract, only complete maps (and the prediction.json that lets --resume
    check its options) may stay, and --resume then finishes the folder."""
    images = workspace / "data" / "test2"
    images.mkdir()
    shutil.copy(workspace / "data" / "test" / "1.tif", images / "1.tif")
    (images / "2.png").write_bytes(b"not a png")
    out = workspace / "maps"
    args = ["predict", workspace / "run", images, "--out", out, "--batch-size", "1", *CPU]
    result = run_cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"{images}/2.png" in lines[0], lines[0]
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert set(left) <= {"1.png", "prediction.json"}, left  # no 2.png, no hidden stage
    if left:
        assert "1.png" in left, left  # a folder is kept only for maps a --resume can use
    (images / "2.png").unlink()
    shutil.copy(workspace / "data" / "test" / "2.tif", images / "2.tif")
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "2.png", "prediction.json"]
    assert not [p for p in workspace.rglob(".*")], "hidden files left"


# --------------------------------------------------------------------------------------------
# ensemble


def ensemble_args(ws: Path, *extra: str | Path, second: Path | None = None,
                  out: Path | None = None) -> list[str | Path]:
    return ["ensemble", ws / "probs", second or probs_copy(ws), "--out", out or ws / "e",
            "--workers", "1", *extra]


ENSEMBLE = (
    Case("out_is_an_input", lambda ws: ensemble_args(ws, out=ws / "probs"),
         ("{ws}/probs", "is also an input")),
    Case("out_is_the_second_input", lambda ws: ensemble_args(ws, out=ws / "probs2"),
         ("{ws}/probs2", "is also an input")),
    Case("out_inside_an_input", lambda ws: ensemble_args(ws, out=ws / "probs" / "e"),
         ("{ws}/probs/e", "lies inside the input {ws}/probs")),
    Case("out_holds_an_input", lambda ws: ensemble_args(ws, out=ws),
         ("holds the input",)),
    Case("out_is_an_input_through_symlink",
         lambda ws: ensemble_args(ws, out=link(ws, "maps", "probs")),
         ("{ws}/maps", "is also an input")),
    Case("out_is_an_existing_file",
         lambda ws: ensemble_args(ws, out=write_file(ws, "notes.txt", b"notes\n")),
         ("{ws}/notes.txt",)),
    Case("out_not_empty", lambda ws: ensemble_args(ws, out=ws / "run"),
         ("{ws}/run", "--overwrite")),
    Case("sixteen_bit_map", lambda ws: ensemble_args(ws, second=sixteen_bit(ws)),
         ("{ws}/bad/1.png", "16-bit")),
    Case("corrupt_map", lambda ws: ensemble_args(ws, second=corrupt_map(ws)),
         ("{ws}/bad/1.png", "not a PNG")),
    Case("map_of_another_size", lambda ws: ensemble_args(ws, second=resized_map(ws)),
         ("{ws}/bad", "32x24")),
    Case("presence_out_of_range",
         lambda ws: ensemble_args(ws, second=write_file(
             probs_copy(ws), "presence.csv", b"id,presence\n1,7\n").parent),
         ("{ws}/probs2/presence.csv", "line 2")),
    Case("folder_missing", lambda ws: ensemble_args(ws, second=ws / "nothing"),
         ("{ws}/nothing",)),
    Case("folder_empty", lambda ws: ensemble_args(ws, second=empty_folder(ws, "empty")),
         ("{ws}/empty", "no probability maps")),
    Case("ids_differ",
         lambda ws: ensemble_args(ws, second=(lambda f: ((f / "6.png").unlink(), f)[1])(
             probs_copy(ws))),
         ("{ws}/probs2", "first: 6", "--allow-missing")),
    Case("same_folder_twice", lambda ws: ensemble_args(ws, second=ws / "probs"),
         ("{ws}/probs", "twice")),
    Case("same_folder_twice_through_symlink",
         lambda ws: ensemble_args(ws, second=link(ws, "maps", "probs")),
         ("{ws}/maps", "twice")),
    Case("one_folder", lambda ws: ["ensemble", ws / "probs", "--out", ws / "e"],
         ("at least two",)),
    Case("method_unknown", lambda ws: ensemble_args(ws, "--method", "median"),
         ("--method", "median")),
    Case("weights_one_for_two_folders",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "1"),
         ("--weights",)),
    Case("weights_negative",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "1,-1"),
         ("weights 1,-1",)),
    Case("weights_nan",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "nan,1"),
         ("weights nan,1",)),
    Case("weights_zero",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "0,0"),
         ("weights 0,0",)),
    Case("weights_garbage",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "a,b"),
         ("--weights 'a,b'",)),
    Case("weighted_without_weights", lambda ws: ensemble_args(ws, "--method", "weighted"),
         ("--weights",)),
    Case("asme_base_negative",
         lambda ws: ensemble_args(ws, "--method", "asme", "--asme-base", "-1"),
         ("--asme-base -1",)),
    Case("threshold_above_one", lambda ws: ensemble_args(ws, "--threshold", "2"),
         ("--threshold",)),
    Case("workers_zero", lambda ws: ensemble_args(ws, "--workers", "0"), ("--workers",)),
    Case("unknown_option", lambda ws: ensemble_args(ws, "--frobnicate"), ("--frobnicate",)),
)


@table(*ENSEMBLE)
def test_ensemble_refuses(case: Case, workspace: Path) -> None:
    check(case, workspace)


# --------------------------------------------------------------------------------------------
# crf


def crf_args(ws: Path, *extra: str | Path, probs: Path | None = None,
             images: Path | None = None, out: Path | None = None) -> list[str | Path]:
    return ["crf", probs or ws / "probs", images or ws / "data" / "test",
            "--out", out or ws / "c", "--workers", "1", *extra]


CRF = (
    Case("out_is_images", lambda ws: crf_args(ws, out=ws / "data" / "test"),
         ("{ws}/data/test", "is also an input")),
    Case("out_is_probs", lambda ws: crf_args(ws, out=ws / "probs"),
         ("{ws}/probs", "is also an input")),
    Case("out_inside_probs", lambda ws: crf_args(ws, out=ws / "probs" / "c"),
         ("{ws}/probs/c", "lies inside the input {ws}/probs")),
    Case("out_inside_images", lambda ws: crf_args(ws, out=ws / "data" / "test" / "c"),
         ("{ws}/data/test/c", "lies inside the input {ws}/data/test")),
    Case("out_holds_images", lambda ws: crf_args(ws, out=ws / "data"),
         ("{ws}/data", "holds the input {ws}/data/test")),
    Case("out_is_probs_through_symlink",
         lambda ws: crf_args(ws, out=link(ws, "maps", "probs")),
         ("{ws}/maps", "is also an input")),
    Case("out_is_images_through_symlink",
         lambda ws: crf_args(ws, out=link(ws, "images", "data/test")),
         ("{ws}/images", "is also an input")),
    Case("out_is_an_existing_file",
         lambda ws: crf_args(ws, out=write_file(ws, "notes.txt", b"notes\n")),
         ("{ws}/notes.txt",)),
    Case("resume_other_iterations",
         lambda ws: crf_args(ws, "--resume", "--iterations", "3", out=crf_folder(ws)),
         ("{ws}/crfout", "was written with --iterations 5, not 3")),
    Case("resume_other_schan",
         lambda ws: crf_args(ws, "--resume", "--schan", "7", out=crf_folder(ws)),
         ("{ws}/crfout", "was written with --schan")),
    Case("resume_into_predict_folder",
         lambda ws: crf_args(ws, "--resume", out=probs_copy(ws)),
         ("{ws}/probs2", "was written by 'predict'")),
    Case("out_not_empty", lambda ws: crf_args(ws, out=probs_copy(ws)),
         ("{ws}/probs2", "--overwrite")),
    Case("image_missing_for_a_map", lambda ws: crf_args(ws, images=images_subset(ws, "1")),
         ("{ws}/subset", "no image", "first: 1")),
    Case("map_of_another_size", lambda ws: crf_args(ws, probs=resized_map(ws)),
         ("{ws}/bad/1.png", "32x24", "64x48")),
    Case("corrupt_map_first", lambda ws: crf_args(ws, probs=corrupt_map(ws)),
         ("{ws}/bad/1.png", "not a PNG")),
    Case("sixteen_bit_map", lambda ws: crf_args(ws, probs=sixteen_bit(ws)),
         ("{ws}/bad/1.png", "16-bit")),
    Case("prediction_json_invalid",
         lambda ws: crf_args(ws, probs=write_file(probs_copy(ws), "prediction.json",
                                                   b"{").parent),
         ("{ws}/probs2/prediction.json", "not valid JSON")),
    Case("probs_missing", lambda ws: crf_args(ws, probs=ws / "nothing"), ("{ws}/nothing",)),
    Case("images_missing", lambda ws: crf_args(ws, images=ws / "nothing.csv"),
         ("{ws}/nothing.csv",)),
    Case("iterations_negative", lambda ws: crf_args(ws, "--iterations", "-1"),
         ("--iterations",)),
    Case("sxy_gaussian_negative", lambda ws: crf_args(ws, "--sxy-gaussian", "-1"),
         ("--sxy-gaussian -1",)),
    Case("sxy_bilateral_nan", lambda ws: crf_args(ws, "--sxy-bilateral", "nan"),
         ("--sxy-bilateral nan",)),
    Case("schan_zero", lambda ws: crf_args(ws, "--schan", "0"), ("--schan 0",)),
    Case("compat_negative", lambda ws: crf_args(ws, "--compat-gaussian", "-3"),
         ("--compat-gaussian -3",)),
    Case("workers_zero", lambda ws: crf_args(ws, "--workers", "0"), ("--workers",)),
    Case("unknown_option", lambda ws: crf_args(ws, "--frobnicate"), ("--frobnicate",)),
)


@table(*CRF)
def test_crf_refuses(case: Case, workspace: Path) -> None:
    check(case, workspace)


# --------------------------------------------------------------------------------------------
# recipes


RECIPES = (
    Case("unknown", lambda ws: ["recipes", "nosuch"], ("unknown recipe 'nosuch'", "known:"),
         {"absent": ("did you mean",)}),
    Case("misspelt_suggests", lambda ws: ["recipes", "nerve-defualt"],
         ("nerve-defualt", "nerve-default")),
    Case("misspelt_json_suggests", lambda ws: ["recipes", "seed001-unte", "--json"],
         ("seed001-unte", "seed001-unet")),
    Case("path_traversal", lambda ws: ["recipes", "../../../etc/passwd"],
         ("unknown recipe '../../../etc/passwd'",)),
    Case("a_file_path", lambda ws: ["recipes", str(ws / "folds.csv")], ("folds.csv",)),
    Case("empty_name", lambda ws: ["recipes", ""], ("unknown recipe ''",)),
    Case("extra_argument", lambda ws: ["recipes", "nerve-default", "seed001-unet"],
         ("seed001-unet",)),
    Case("unknown_option", lambda ws: ["recipes", "--frobnicate"], ("--frobnicate",)),
)


@table(*RECIPES)
def test_recipes_refuses(case: Case, workspace: Path) -> None:
    check(case, workspace)
