"""Hostile input to the model commands (``train``, ``predict``, ``ensemble``, ``crf``,
``recipes``): every case must keep the bad-input contract of docs/formats.md ("Conventions"),
checked by ``tests.hostile.assert_refused``: exit code 2, one ``error:`` line naming the file
(and what is wrong), no traceback, and the workspace byte for byte as it was, so no output
folder, ``prediction.json``, ``config.json`` or hidden ``.partial`` file is left behind.

Each table holds one command's cases: outputs that are (or lie inside, or hold) an input, also
through a symlink; ``--resume`` with other options than the folder was written with; values out
of range; damaged run folders, training states and weight files; and failed runs that must
leave nothing. Train cases use tiny settings so a case that is wrongly accepted ends quickly.
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

from tests.conftest import run_cli
from tests.hostile import Case, cases, run_case

TINY = ("--arch", "unet-plain", "--width", "2", "--epochs", "1", "--batch-size", "8",
        "--device", "cpu", "--workers", "1")
CPU = ("--device", "cpu", "--workers", "1")


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
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "data" / "train" / "run2", *TINY],
         ("lies inside the input", "data/train")),
    Case("out_inside_images_through_symlink",
         lambda ws: ["train", ws / "folds.csv", "--out", link(ws, "images", "data/train") / "r",
                     *TINY],
         ("lies inside the input",)),
    Case("out_holds_images",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "data", *TINY],
         ("holds the input",)),
    Case("out_is_the_manifest",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "folds.csv", *TINY],
         ("folds.csv",)),
    Case("out_is_an_existing_run",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run", *TINY],
         ("run", "--overwrite")),
    # optimisation values that crashed or were accepted
    Case("lr_negative", lambda ws: train_args(ws, "--lr", "-1"), ("--lr",)),
    Case("lr_nan", lambda ws: train_args(ws, "--lr", "nan"), ("--lr",)),
    Case("lr_inf", lambda ws: train_args(ws, "--lr", "inf"), ("--lr",)),
    Case("lr_zero", lambda ws: train_args(ws, "--lr", "0"), ("--lr",)),
    Case("momentum_above_one", lambda ws: train_args(ws, "--momentum", "1.5"), ("--momentum",)),
    Case("weight_decay_negative", lambda ws: train_args(ws, "--weight-decay", "-1"),
         ("--weight-decay",)),
    Case("step_gamma_zero", lambda ws: train_args(ws, "--scheduler", "step", "--step-gamma", "0"),
         ("--step-gamma",)),
    Case("warmup_nan", lambda ws: train_args(ws, "--warmup-epochs", "nan"), ("--warmup-epochs",)),
    Case("grad_clip_nan", lambda ws: train_args(ws, "--grad-clip", "nan"), ("--grad-clip",)),
    Case("scheduler_unknown", lambda ws: train_args(ws, "--scheduler", "linear"),
         ("--scheduler", "linear")),
    Case("optimizer_unknown", lambda ws: train_args(ws, "--optimizer", "lion"),
         ("--optimizer", "lion")),
    Case("loss_unknown_term", lambda ws: train_args(ws, "--loss", "dice+foo"), ("foo",)),
    Case("loss_empty", lambda ws: train_args(ws, "--loss", ""), ("--loss",)),
    Case("epochs_zero", lambda ws: train_args(ws, "--epochs", "0"), ("--epochs",)),
    Case("batch_size_zero", lambda ws: train_args(ws, "--batch-size", "0"), ("--batch-size",)),
    Case("threshold_above_one", lambda ws: train_args(ws, "--threshold", "2"), ("--threshold",)),
    Case("amp_unknown", lambda ws: train_args(ws, "--amp", "fp8"), ("--amp", "fp8")),
    Case("device_unknown", lambda ws: train_args(ws, "--device", "tpu"), ("tpu",)),
    Case("unknown_option", lambda ws: train_args(ws, "--frobnicate"), ("--frobnicate",)),
    # data and geometry
    Case("fold_missing", lambda ws: train_args(ws, "--fold", "7"), ("fold 7",)),
    Case("fold_not_a_number", lambda ws: train_args(ws, "--fold", "x"), ("--fold",)),
    Case("size_not_multiple_of_32", lambda ws: train_args(ws, "--size", "100x100"),
         ("100x100", "multiple of 32")),
    Case("size_zero", lambda ws: train_args(ws, "--size", "0x0"), ("--size",)),
    Case("size_garbage", lambda ws: train_args(ws, "--size", "big"), ("--size",)),
    Case("balance_zero_negatives", lambda ws: train_args(ws, "--balance", "1:0"), ("--balance",)),
    Case("balance_garbage", lambda ws: train_args(ws, "--balance", "x"), ("--balance",)),
    Case("label_absent", lambda ws: train_args(ws, "--label", "9"),
         ("no pixel of any mask equals --label 9",)),
    Case("manifest_missing",
         lambda ws: ["train", ws / "nothing.csv", "--out", ws / "run2", *TINY],
         ("nothing.csv",)),
    Case("manifest_without_fold_column",
         lambda ws: ["train", no_fold_column(ws), "--out", ws / "run2", *TINY],
         ("nofold.csv", "fold")),
    # model
    Case("arch_unknown",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unett",
                     "--epochs", "1", "--device", "cpu", "--workers", "1"],
         ("unett",)),
    Case("width_zero", lambda ws: train_args(ws, "--width", "0"), ("--width",)),
    Case("encoder_weights_plain_pickle",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unet",
                     "--encoder", "resnet18", "--encoder-weights",
                     write_file(ws, "enc.pt", pickle.dumps(argparse.Namespace(weight=1))),
                     "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--workers", "1"],
         ("enc.pt",)),
    Case("encoder_weights_garbage",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unet",
                     "--encoder", "resnet18", "--encoder-weights",
                     write_file(ws, "enc.pt", b"garbage"),
                     "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--workers", "1"],
         ("enc.pt",)),
    Case("encoder_weights_missing_file",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unet",
                     "--encoder", "resnet18", "--encoder-weights", ws / "enc.pt",
                     "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--workers", "1"],
         ("enc.pt",)),
    # recipes and configs
    Case("recipe_unknown", lambda ws: train_args(ws, "--recipe", "nerve-defualt"),
         ("nerve-defualt", "nerve-default")),
    Case("config_invalid_json",
         lambda ws: train_args(ws, "--config", write_file(ws, "recipe.json", b"{not json")),
         ("recipe.json",)),
    Case("config_unknown_key",
         lambda ws: train_args(ws, "--config",
                               write_file(ws, "recipe.json", b'{"learning_rat": 0.1}')),
         ("recipe.json", "learning_rat")),
    # resume
    Case("resume_state_garbage",
         lambda ws: ["train", "--resume", replaced_state(ws, b"\x00garbage" * 10)],
         ("state.pt", "not a nerveseg training state")),
    Case("resume_state_plain_pickle",
         lambda ws: ["train", "--resume", replaced_state(ws, pickle.dumps({"a": 1}))],
         ("state.pt", "not a nerveseg training state")),
    Case("resume_other_lr", lambda ws: ["train", "--resume", ws / "run", "--lr", "0.5"],
         ("cannot resume with different options",)),
    Case("resume_not_a_run", lambda ws: ["train", "--resume", ws / "probs"],
         ("probs", "not a run folder")),
    Case("resume_config_invalid_json",
         lambda ws: ["train", "--resume", write_file(ws, "run/config.json", b"{").parent],
         ("config.json",)),
)


@cases(*TRAIN)
def test_train_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


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
         ("is also an input",)),
    Case("out_inside_run", lambda ws: predict_args(ws, out=ws / "run" / "maps"),
         ("lies inside the input",)),
    Case("out_inside_images", lambda ws: predict_args(ws, out=ws / "data" / "test" / "maps"),
         ("lies inside the input",)),
    Case("out_holds_run", lambda ws: predict_args(ws, out=ws),
         ("holds the input",)),
    Case("out_is_images_through_symlink",
         lambda ws: predict_args(ws, out=link(ws, "images", "data/test")),
         ("is also an input",)),
    Case("out_inside_run_through_symlink",
         lambda ws: predict_args(ws, out=link(ws, "model", "run") / "maps"),
         ("lies inside the input",)),
    Case("images_through_symlink_out_is_images",
         lambda ws: predict_args(ws, images=link(ws, "images", "data/test"),
                                 out=ws / "data" / "test"),
         ("is also an input",)),
    Case("masks_is_images", lambda ws: predict_args(ws, "--masks", ws / "data" / "test"),
         ("is also an input",)),
    Case("masks_inside_run", lambda ws: predict_args(ws, "--masks", ws / "run" / "m"),
         ("lies inside the input",)),
    Case("out_is_an_existing_file",
         lambda ws: predict_args(ws, out=write_file(ws, "notes.txt", b"notes\n")),
         ("notes.txt",)),
    Case("out_not_empty", lambda ws: predict_args(ws, out=ws / "probs"),
         ("probs", "--overwrite")),
    Case("out_not_empty_with_masks_leaves_no_masks_folder",
         lambda ws: predict_args(ws, "--masks", ws / "m", out=ws / "probs"),
         ("probs", "--overwrite")),
    # --resume with other options or another command's folder
    Case("resume_other_tta",
         lambda ws: predict_args(ws, "--resume", "--tta", "flips", out=ws / "probs"),
         ("was written with --tta",)),
    Case("resume_other_threshold",
         lambda ws: predict_args(ws, "--resume", "--threshold", "0.3", out=ws / "probs"),
         ("was written with --threshold",)),
    Case("resume_other_merge",
         lambda ws: predict_args(ws, "--resume", "--merge", "asme", out=ws / "probs"),
         ("was written with --merge",)),
    Case("resume_other_images",
         lambda ws: predict_args(ws, "--resume", images=ws / "data" / "train", out=ws / "probs"),
         ("probs", "data/train")),
    Case("resume_into_crf_folder",
         lambda ws: predict_args(ws, "--resume", out=crf_folder(ws)),
         ("crfout", "was written by")),
    # run folders that cannot be right
    Case("config_geometry_width_zero", bad_config(lambda c: set_path(c, ("geometry", "width"), 0)),
         ("config.json", "not a nerveseg run config")),
    Case("config_geometry_mode_unknown",
         bad_config(lambda c: set_path(c, ("geometry", "mode"), "stretch")),
         ("config.json", "not a nerveseg run config")),
    Case("config_std_zero", bad_config(lambda c: set_path(c, ("normalization", "std"), 0)),
         ("config.json", "not a nerveseg run config")),
    Case("config_std_nan",
         bad_config(lambda c: set_path(c, ("normalization", "std"), float("nan"))),
         ("config.json", "not a nerveseg run config")),
    Case("config_mean_string",
         bad_config(lambda c: set_path(c, ("normalization", "mean"), "dark")),
         ("config.json", "not a nerveseg run config")),
    Case("config_without_model", bad_config(lambda c: c.pop("model")),
         ("config.json", "not a nerveseg run config", "model")),
    Case("config_arch_unknown", bad_config(lambda c: set_path(c, ("model", "arch"), "unett")),
         ("config.json", "unett")),
    Case("config_in_channels_zero",
         bad_config(lambda c: set_path(c, ("model", "in_channels"), 0)),
         ("config.json", "in_channels")),
    Case("config_width_other_than_weights",
         bad_config(lambda c: set_path(c, ("model", "extra", "width"), 4)),
         ("model.safetensors",)),
    Case("config_invalid_json",
         lambda ws: predict_args(ws, run=write_file(run_copy(ws), "config.json", b"{").parent),
         ("config.json", "not a nerveseg run config")),
    Case("config_a_list",
         lambda ws: predict_args(ws, run=write_file(run_copy(ws), "config.json", b"[1]").parent),
         ("config.json", "not a nerveseg run config")),
    Case("weights_missing",
         lambda ws: predict_args(ws, run=(lambda r: ((r / "model.safetensors").unlink(), r)[1])(
             run_copy(ws))),
         ("model.safetensors",)),
    Case("weights_truncated", lambda ws: predict_args(ws, run=truncated_weights(ws)),
         ("model.safetensors",)),
    Case("weights_are_a_pickle",
         lambda ws: predict_args(ws, run=write_file(run_copy(ws), "model.safetensors",
                                                    pickle.dumps({"a": 1})).parent),
         ("model.safetensors",)),
    Case("run_missing", lambda ws: predict_args(ws, run=ws / "norun"), ("norun",)),
    Case("run_is_a_file", lambda ws: predict_args(ws, run=ws / "folds.csv"), ("folds.csv",)),
    # failed runs leave nothing
    Case("corrupt_image_first", lambda ws: predict_args(ws, images=corrupt_set(ws)),
         ("1.png",)),
    Case("corrupt_image_first_with_masks",
         lambda ws: predict_args(ws, "--masks", ws / "m", images=corrupt_set(ws)),
         ("1.png",)),
    Case("images_empty", lambda ws: predict_args(ws, images=empty_folder(ws, "empty")),
         ("empty",)),
    Case("postprocess_invalid_json",
         lambda ws: predict_args(ws, "--masks", ws / "m", "--postprocess",
                                 write_file(ws, "post.json", b"{")),
         ("post.json",)),
    Case("presence_from_garbage",
         lambda ws: predict_args(ws, "--presence-threshold", "0.5", "--presence-from",
                                 write_file(ws, "presence.csv", b"who,what\n1,2\n")),
         ("presence.csv",)),
    Case("out_of_fold_without_manifest",
         lambda ws: predict_args(ws, "--out-of-fold"),
         ("--out-of-fold",)),
    # option values out of range
    Case("batch_size_zero", lambda ws: predict_args(ws, "--batch-size", "0"), ("--batch-size",)),
    Case("part_beyond_count", lambda ws: predict_args(ws, "--part", "3/2"), ("--part",)),
    Case("part_zero", lambda ws: predict_args(ws, "--part", "0/2"), ("--part",)),
    Case("part_garbage", lambda ws: predict_args(ws, "--part", "a/b"), ("--part",)),
    Case("tta_unknown", lambda ws: predict_args(ws, "--tta", "rotate"), ("--tta", "rotate")),
    Case("tta_merge_unknown", lambda ws: predict_args(ws, "--tta-merge", "median"),
         ("--tta-merge", "median")),
    Case("merge_unknown", lambda ws: predict_args(ws, "--merge", "median"),
         ("--merge", "median")),
    Case("asme_base_nan", lambda ws: predict_args(ws, "--asme-base", "nan"), ("--asme-base",)),
    Case("threshold_above_one", lambda ws: predict_args(ws, "--threshold", "1.5"),
         ("--threshold",)),
    Case("amp_unknown", lambda ws: predict_args(ws, "--amp", "fp8"), ("--amp", "fp8")),
    Case("unknown_option", lambda ws: predict_args(ws, "--frobnicate"), ("--frobnicate",)),
    Case("no_out", lambda ws: ["predict", ws / "run", ws / "data" / "test", *CPU], ("--out",)),
)


@cases(*PREDICT)
def test_predict_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# ensemble


def ensemble_args(ws: Path, *extra: str | Path, second: Path | None = None,
                  out: Path | None = None) -> list[str | Path]:
    return ["ensemble", ws / "probs", second or probs_copy(ws), "--out", out or ws / "e",
            "--workers", "1", *extra]


ENSEMBLE = (
    Case("out_is_an_input", lambda ws: ensemble_args(ws, out=ws / "probs"),
         ("is also an input",)),
    Case("out_inside_an_input", lambda ws: ensemble_args(ws, out=ws / "probs" / "e"),
         ("lies inside the input",)),
    Case("out_holds_an_input", lambda ws: ensemble_args(ws, out=ws),
         ("holds the input",)),
    Case("out_is_an_input_through_symlink",
         lambda ws: ensemble_args(ws, out=link(ws, "maps", "probs")),
         ("is also an input",)),
    Case("sixteen_bit_map", lambda ws: ensemble_args(ws, second=sixteen_bit(ws)),
         ("1.png",)),
    Case("corrupt_map", lambda ws: ensemble_args(ws, second=corrupt_map(ws)), ("1.png",)),
    Case("map_of_another_size", lambda ws: ensemble_args(ws, second=resized_map(ws)),
         ("1.png",)),
    Case("folder_missing", lambda ws: ensemble_args(ws, second=ws / "nothing"), ("nothing",)),
    Case("folder_empty", lambda ws: ensemble_args(ws, second=empty_folder(ws, "empty")),
         ("empty",)),
    Case("ids_differ",
         lambda ws: ensemble_args(ws, second=(lambda f: ((f / "6.png").unlink(), f)[1])(
             probs_copy(ws))),
         ("6",)),
    Case("one_folder", lambda ws: ["ensemble", ws / "probs", "--out", ws / "e"], ("two",)),
    Case("method_unknown", lambda ws: ensemble_args(ws, "--method", "median"),
         ("--method", "median")),
    Case("weights_one_for_two_folders",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "1"),
         ("--weights",)),
    Case("weights_negative",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "1,-1"),
         ("--weights",)),
    Case("weights_nan",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "nan,1"),
         ("--weights",)),
    Case("weights_zero",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "0,0"),
         ("--weights",)),
    Case("weights_garbage",
         lambda ws: ensemble_args(ws, "--method", "weighted", "--weights", "a,b"),
         ("--weights",)),
    Case("weighted_without_weights", lambda ws: ensemble_args(ws, "--method", "weighted"),
         ("--weights",)),
    Case("asme_base_negative",
         lambda ws: ensemble_args(ws, "--method", "asme", "--asme-base", "-1"),
         ("--asme-base",)),
    Case("threshold_above_one", lambda ws: ensemble_args(ws, "--threshold", "2"),
         ("--threshold",)),
    Case("workers_zero", lambda ws: ensemble_args(ws, "--workers", "0"), ("--workers",)),
    Case("unknown_option", lambda ws: ensemble_args(ws, "--frobnicate"), ("--frobnicate",)),
)


@cases(*ENSEMBLE)
def test_ensemble_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# crf


def crf_args(ws: Path, *extra: str | Path, probs: Path | None = None,
             images: Path | None = None, out: Path | None = None) -> list[str | Path]:
    return ["crf", probs or ws / "probs", images or ws / "data" / "test",
            "--out", out or ws / "c", "--workers", "1", *extra]


CRF = (
    Case("out_is_images", lambda ws: crf_args(ws, out=ws / "data" / "test"),
         ("is also an input",)),
    Case("out_is_probs", lambda ws: crf_args(ws, out=ws / "probs"), ("is also an input",)),
    Case("out_inside_probs", lambda ws: crf_args(ws, out=ws / "probs" / "c"),
         ("lies inside the input",)),
    Case("out_holds_images", lambda ws: crf_args(ws, out=ws / "data"), ("holds the input",)),
    Case("out_is_probs_through_symlink",
         lambda ws: crf_args(ws, out=link(ws, "maps", "probs")), ("is also an input",)),
    Case("resume_other_iterations",
         lambda ws: crf_args(ws, "--resume", "--iterations", "3", out=crf_folder(ws)),
         ("crfout", "was written with --iterations")),
    Case("resume_into_predict_folder",
         lambda ws: crf_args(ws, "--resume", out=probs_copy(ws)),
         ("probs2", "was written by")),
    Case("out_not_empty", lambda ws: crf_args(ws, out=probs_copy(ws)),
         ("probs2", "--overwrite")),
    Case("image_missing_for_a_map", lambda ws: crf_args(ws, images=images_subset(ws, "1")),
         ("1",)),
    Case("map_of_another_size", lambda ws: crf_args(ws, probs=resized_map(ws)), ("1.png",)),
    Case("corrupt_map_first", lambda ws: crf_args(ws, probs=corrupt_map(ws)), ("1.png",)),
    Case("sixteen_bit_map", lambda ws: crf_args(ws, probs=sixteen_bit(ws)), ("1.png",)),
    Case("probs_missing", lambda ws: crf_args(ws, probs=ws / "nothing"), ("nothing",)),
    Case("iterations_negative", lambda ws: crf_args(ws, "--iterations", "-1"),
         ("--iterations",)),
    Case("sxy_gaussian_negative", lambda ws: crf_args(ws, "--sxy-gaussian", "-1"),
         ("--sxy-gaussian",)),
    Case("sxy_bilateral_nan", lambda ws: crf_args(ws, "--sxy-bilateral", "nan"),
         ("--sxy-bilateral",)),
    Case("schan_zero", lambda ws: crf_args(ws, "--schan", "0"), ("--schan",)),
    Case("compat_negative", lambda ws: crf_args(ws, "--compat-gaussian", "-3"),
         ("--compat-gaussian",)),
    Case("workers_zero", lambda ws: crf_args(ws, "--workers", "0"), ("--workers",)),
    Case("unknown_option", lambda ws: crf_args(ws, "--frobnicate"), ("--frobnicate",)),
)


@cases(*CRF)
def test_crf_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# recipes


RECIPES = (
    Case("unknown", lambda ws: ["recipes", "nosuch"], ("nosuch",)),
    Case("misspelt_suggests", lambda ws: ["recipes", "nerve-defualt"],
         ("nerve-defualt", "nerve-default")),
    Case("misspelt_json_suggests", lambda ws: ["recipes", "seed001-unte", "--json"],
         ("seed001-unte", "seed001-unet")),
    Case("path_traversal", lambda ws: ["recipes", "../../../etc/passwd"], ("passwd",)),
    Case("a_file_path", lambda ws: ["recipes", str(ws / "folds.csv")], ("folds.csv",)),
    Case("empty_name", lambda ws: ["recipes", ""], ("recipe",)),
    Case("extra_argument", lambda ws: ["recipes", "nerve-default", "seed001-unet"],
         ("seed001-unet",)),
    Case("unknown_option", lambda ws: ["recipes", "--frobnicate"], ("--frobnicate",)),
)


@cases(*RECIPES)
def test_recipes_refuses(case: Case, workspace: Path) -> None:
    run_case(case, workspace)
