"""Hostile input that is well formed file by file but inconsistent across files, and lists and
names that used to be cut short silently (issue 26, items 4 to 6). Every case keeps the
bad-input contract of docs/formats.md ("Conventions"), checked by
``tests.hostile.assert_refused``: exit code 2, one ``error:`` line naming the file and both
values, no traceback, the workspace byte for byte as it was.

1. Records read against each other (nerveseg_cli/crosscheck.py): an exported model's sidecar
   against its graph, its export check, its model and training records and its inference
   defaults; a run's config.json against its training record and its weights; a folder's
   classes.json against the class folders present and their prediction.json.
2. Reserved names (nerveseg_cli/names.py): class names that would become the files a
   command writes, from ``--classes``, a joined Kaggle CSV or a classes.json.
3. Option lists (nerveseg_cli/lists.py): repeats, empty items and contradictions.
4. Messages that named the wrong problem: a folder given as a file, a video of a suffix not
   read, a palette label map without ``--label`` or ``--classes``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from nerveseg_cli.inference.export import file_sha256, sidecar_path
from tests.hostile import Case, run_case
from tests.test_hostile_data import make_palette_set

TINY = ("--arch", "unet-plain", "--width", "2", "--epochs", "1", "--batch-size", "8",
        "--device", "cpu", "--workers", "1")
CPU = ("--device", "cpu", "--workers", "1")
EDITED = "the file was edited or mixes two runs"


def table(*items: Case) -> pytest.MarkDecorator:
    names = [item.name for item in items]
    assert len(names) == len(set(names)), "duplicate case names"
    return pytest.mark.parametrize("case", items, ids=names)


def set_path(record: dict, dotted: str, value: Any) -> None:
    """``record["a"]["b"] = value`` for ``dotted`` = ``a.b``."""
    *parents, last = dotted.split(".")
    for key in parents:
        record = record[key]
    record[last] = value


def edit_json(path: Path, **changes: Any) -> None:
    """Rewrite a JSON file with ``changes`` (keys: dotted paths with ``__`` for ``.``)."""
    record = json.loads(path.read_text())
    for key, value in changes.items():
        set_path(record, key.replace("__", "."), value)
    path.write_text(json.dumps(record))


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# --------------------------------------------------------------------------------------------
# 1a. an exported model's sidecar


@pytest.fixture(scope="module")
def fixed_graph(hostile_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network exported fixed to its geometry (48x64), without a sidecar."""
    import torch

    from nerveseg_cli.inference.export import _export
    from nerveseg_cli.io.runs import load_run

    _, model = load_run(hostile_base / "run")
    out = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    out.write_bytes(_export(model, torch.zeros(1, 1, 48, 64).numpy(), 17, False, False))
    return out


def with_export(edit: Callable[[Path], object] | None = None, *extra: str,
                command: str = "predict") -> Callable[[Path], list[str | Path]]:
    """A ``prepare``: the export copied into the workspace as ``model.onnx``, its sidecar
    edited by ``edit(sidecar path)``, then ``predict`` (or ``bench``) on it."""
    def prepare(ws: Path) -> list[str | Path]:
        if edit is not None:
            edit(sidecar_path(ws / "model.onnx"))
        if command == "bench":
            return ["bench", ws / "model.onnx", "--engine", "onnxruntime", "--frames", "2",
                    "--batch-sizes", "1", "--device", "cpu", *extra]
        return ["predict", ws / "model.onnx", ws / "data" / "test", "--out", ws / "maps",
                "--engine", "onnxruntime", *CPU, *extra]
    return prepare


def sidecar(**changes: Any) -> Callable[[Path], None]:
    return lambda path: edit_json(path, **changes)


SIDE = "{ws}/model.onnx.json"

SIDECAR = (
    # the case of issue 26: another size than the run's, which gave maps 254 levels off
    Case("geometry_other_size", with_export(sidecar(geometry__width=128)),
         (SIDE, "geometry 128x48", "export check", "64x48", EDITED)),
    Case("geometry_other_size_in_bench",
         with_export(sidecar(geometry__width=128), command="bench"),
         (SIDE, "geometry 128x48", "64x48")),
    Case("geometry_resized_without_size",
         with_export(sidecar(geometry__mode="resize")),
         (SIDE, "geometry resize 64x48", "its training record says pad (no --size)")),
    Case("training_record_size_edited",
         with_export(sidecar(training__size="32x32")),
         (SIDE, "geometry pad 64x48", "its training record says resize 32x32")),
    Case("model_record_in_channels", with_export(sidecar(model__in_channels=3)),
         (SIDE, "input channels 1", "its model record says 3")),
    Case("training_record_in_channels", with_export(sidecar(training__in_channels=3)),
         (SIDE, "in_channels 1", "its training record says --in-channels 3")),
    Case("training_record_classes",
         with_export(sidecar(training__classes="background,nerve,vessel")),
         (SIDE, "classes none (binary)", "--classes background,nerve,vessel")),
    Case("training_record_presence", with_export(sidecar(training__presence_head=True)),
         (SIDE, "presence_head False", "--presence-head True")),
    Case("model_record_multilabel", with_export(sidecar(multilabel=True)),
         (SIDE, "multilabel True", "its model record says False")),
    Case("input_fixed_to_another_size",
         with_export(sidecar(input__shape=["batch", 1, 96, 128])),
         (SIDE, "input shape ['batch', 1, 96, 128]", "any height and width")),
    Case("export_check_channels",
         with_export(sidecar(check__inputs=[[2, 3, 48, 64], [1, 3, 64, 80]])),
         (SIDE, "input channels 1", "its export check (check.inputs) says 3")),
    Case("export_check_not_shapes", with_export(sidecar(check__inputs=[["a"]])),
         (SIDE, "not a valid nerveseg ONNX sidecar", "check inputs")),
    Case("postprocess_other_than_inference",
         with_export(sidecar(postprocess__threshold=0.3)),
         (SIDE, "postprocess threshold, min_area 0.3, 0", "its inference record says 0.5, 0")),
    Case("inference_threshold_edited",
         with_export(sidecar(inference={"threshold": 0.8})),
         (SIDE, "postprocess threshold, min_area 0.5, 0", "says 0.8, 0")),
    Case("training_record_classes_unreadable",
         with_export(sidecar(training__classes="background,,x")),
         (SIDE, "its training record's --classes", "an empty item")),
)


@table(*SIDECAR)
def test_an_inconsistent_sidecar_is_refused(case: Case, workspace: Path,
                                            exported: Path) -> None:
    shutil.copyfile(exported, workspace / "model.onnx")
    shutil.copyfile(sidecar_path(exported), sidecar_path(workspace / "model.onnx"))
    run_case(case, workspace)


def _fixed(geometry_width: int) -> Callable[[Path], None]:
    """The sidecar of the fixed graph, every record of it edited to one geometry (a careful
    hand edit): only the graph itself can tell."""
    def edit(path: Path) -> None:
        size = [48, geometry_width]
        edit_json(path, sha256=file_sha256(path.with_suffix("").read_bytes()),
                  input__dynamic_size=False, input__shape=["batch", 1, *size],
                  outputs__mask_logits__shape=["batch", 1, *size], geometry__width=size[1],
                  check__inputs=[[2, 1, *size]])
    return edit


def test_a_fixed_graph_and_a_sidecar_of_another_geometry_are_refused(
        workspace: Path, exported: Path, fixed_graph: Path) -> None:
    from tests.hostile import assert_refused

    model = workspace / "model.onnx"
    shutil.copyfile(fixed_graph, model)
    shutil.copyfile(sidecar_path(exported), sidecar_path(model))
    _fixed(80)(sidecar_path(model))
    assert_refused(workspace, with_export()(workspace), "{ws}/model.onnx",
                   "input has shape ['batch', 1, 48, 64]", "its sidecar says the geometry 80x48")
    edit_json(sidecar_path(model), input__dynamic_size=True,
              input__shape=["batch", 1, "height", "width"],
              outputs__mask_logits__shape=["batch", 1, "height", "width"], geometry__width=64,
              check__inputs=[[2, 1, 48, 64]])
    assert_refused(workspace, with_export()(workspace), "{ws}/model.onnx",
                   "input has shape ['batch', 1, 48, 64]", "any height and width")


def test_a_fixed_graph_with_its_own_sidecar_predicts(workspace: Path, exported: Path,
                                                    fixed_graph: Path) -> None:
    """The control of the test above: the same files, consistent, are accepted."""
    from tests.conftest import run_cli

    model = workspace / "model.onnx"
    shutil.copyfile(fixed_graph, model)
    shutil.copyfile(sidecar_path(exported), sidecar_path(model))
    _fixed(64)(sidecar_path(model))
    result = run_cli(*with_export()(workspace))
    assert result.exit_code == 0, result.stderr
    assert len(list((workspace / "maps").glob("*.png"))) == 6


# --------------------------------------------------------------------------------------------
# 1b. a run's config.json, against its training record and its weights


def edited_run(edit: Callable[[dict], object], *extra: str,
               command: str = "predict") -> Callable[[Path], list[str | Path]]:
    """A copy of ``run/`` as ``badrun/`` whose config.json is ``edit(config)``."""
    def prepare(ws: Path) -> list[str | Path]:
        run = ws / "badrun"
        shutil.copytree(ws / "run", run)
        config = json.loads((run / "config.json").read_text())
        edit(config)
        (run / "config.json").write_text(json.dumps(config))
        if command == "export":
            return ["export", run, "--out", ws / "m.onnx"]
        return ["predict", run, ws / "data" / "test", "--out", ws / "maps", *CPU, *extra]
    return prepare


def config(**changes: Any) -> Callable[[dict], None]:
    def edit(record: dict) -> None:
        for key, value in changes.items():
            set_path(record, key.replace("__", "."), value)
    return edit


CONF = "{ws}/badrun/config.json"
WEIGHTS = "{ws}/badrun/model.safetensors"
THREE = ["background", "nerve", "vessel"]

CONFIG = (
    Case("geometry_resized_without_size", edited_run(config(geometry__mode="resize")),
         (CONF, "geometry resize 64x48", "its training record says pad (no --size)", EDITED)),
    Case("geometry_resized_to_another_size",
         edited_run(config(geometry={"mode": "resize", "width": 128, "height": 96},
                           training__size="64x48")),
         (CONF, "geometry resize 128x96", "its training record says resize 64x48")),
    Case("geometry_edited_before_export",
         edited_run(config(geometry__mode="resize"), command="export"),
         (CONF, "geometry resize 64x48", "pad (no --size)")),
    Case("model_in_channels_only", edited_run(config(model__in_channels=3)),
         (CONF, "in_channels 3", "its training record says --in-channels 1")),
    Case("model_arch_only", edited_run(config(model__arch="sharp-unet")),
         (CONF, "arch sharp-unet", "its training record says --arch unet-plain")),
    Case("classes_without_the_training_record",
         edited_run(config(model__classes=3, classes=THREE)),
         (CONF, "classes background,nerve,vessel", "its training record says --classes None")),
    Case("presence_without_the_training_record",
         edited_run(config(model__presence_head=True)),
         (CONF, "presence_head True", "--presence-head False")),
    # consistent records, weights of another network: the weights are checked against them
    Case("in_channels_other_than_the_weights",
         edited_run(config(model__in_channels=3, training__in_channels=3)),
         (WEIGHTS, "weights do not fit the config", "size mismatch")),
    Case("classes_other_than_the_weights",
         edited_run(config(model__classes=3, classes=THREE,
                           training__classes="background,nerve,vessel")),
         (WEIGHTS, "weights do not fit the config")),
    Case("presence_other_than_the_weights",
         edited_run(config(model__presence_head=True, training__presence_head=True)),
         (WEIGHTS, "weights do not fit the config", "missing")),
    Case("class_name_reserved_in_config",
         edited_run(config(model__classes=3, classes=["background", "nerve", "classes.json"],
                           training__classes="background,nerve,classes.json")),
         (CONF, "class name 'classes.json' is a name nerveseg gives its own files")),
)


@table(*CONFIG)
def test_an_inconsistent_run_config_is_refused(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


def test_resume_with_the_last_weights_of_another_network_is_one_line(
        workspace: Path) -> None:
    """``train --resume`` reads last.safetensors itself: weights of another width are one
    error naming the file, not a traceback."""
    from nerveseg_cli.io.runs import save_weights
    from nerveseg_cli.models import ModelConfig, build_model
    from tests.hostile import assert_refused

    other = build_model(ModelConfig("unet-plain", "none", "none", 1, extra={"width": 4}))
    save_weights(other, workspace / "run" / "last.safetensors")
    assert_refused(workspace, ["train", "--resume", workspace / "run", "--workers", "1"],
                   "{ws}/run/last.safetensors", "weights do not fit the config")


def test_resume_with_the_state_of_another_network_is_one_line(workspace: Path) -> None:
    """state.pt holds the optimizer's moments of the run's parameters: those of another
    network of as many parameters load in torch without a word and failed at the first
    step; they are refused naming the file."""
    from tests.conftest import run_cli
    from tests.hostile import assert_refused

    other = workspace.parent / "other"
    result = run_cli("train", workspace / "folds.csv", "--out", other, *TINY[:2], "--width",
                     "4", *TINY[4:])
    assert result.exit_code == 0, result.stderr
    shutil.copyfile(other / "state.pt", workspace / "run" / "state.pt")
    assert_refused(workspace, ["train", "--resume", workspace / "run", "--workers", "1"],
                   "{ws}/run/state.pt: not the state of this run", "its optimizer's",
                   "for a parameter of shape")


def test_resume_with_a_history_other_than_the_epoch_is_one_line(workspace: Path) -> None:
    import torch

    path = workspace / "run" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["epoch"] = 3
    torch.save(state, path)
    from tests.hostile import assert_refused

    assert_refused(workspace, ["train", "--resume", workspace / "run", "--workers", "1"],
                   "{ws}/run/state.pt: not the state of this run (epoch 3 but its history "
                   "holds epochs 1)")


# --------------------------------------------------------------------------------------------
# 1c. classes.json against the class folders, and 2. reserved names


def class_folder(ws: Path, name: str = "mc", classes: list[str] | None = None) -> Path:
    """``name/``: a probability folder of the classes nerve and vessel (the binary maps of
    ``probs/`` in each), with its classes.json."""
    folder = ws / name
    folder.mkdir()
    for member in ("nerve", "vessel"):
        shutil.copytree(ws / "probs", folder / member)
    write(folder / "classes.json", json.dumps({"classes": classes or THREE}))
    return folder


def ensemble_of(damage: Callable[[Path], object]) -> Callable[[Path], list[str | Path]]:
    """``ensemble mc mc2`` where ``mc`` was damaged by ``damage(mc)``."""
    def prepare(ws: Path) -> list[str | Path]:
        class_folder(ws, "mc2")
        damage(class_folder(ws))
        return ["ensemble", ws / "mc", ws / "mc2", "--out", ws / "e", "--workers", "1"]
    return prepare


def prediction_json(path: Path, **fields: Any) -> None:
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update(fields)
    path.write_text(json.dumps(record))


CLASS_FOLDERS = (
    Case("folder_not_in_classes_json",
         ensemble_of(lambda mc: shutil.copytree(mc / "nerve", mc / "artery")),
         ("{ws}/mc: folder artery/ is not a class of its classes.json (nerve, vessel)",)),
    Case("class_left_out_of_classes_json",
         ensemble_of(lambda mc: write(mc / "classes.json",
                                      json.dumps({"classes": ["background", "nerve"]}))),
         ("{ws}/mc: folder vessel/ is not a class of its classes.json (nerve)",)),
    Case("maps_beside_classes_json",
         ensemble_of(lambda mc: shutil.copyfile(mc / "nerve" / "1.png", mc / "1.png")),
         ("{ws}/mc/1.png: a map beside classes.json",)),
    Case("class_folder_of_another_class",
         ensemble_of(lambda mc: prediction_json(mc / "nerve" / "prediction.json",
                                                **{"class": "vessel"})),
         ("{ws}/mc/nerve/prediction.json: class 'vessel'", "its folder's name", "'nerve'")),
    Case("class_folder_of_other_classes",
         ensemble_of(lambda mc: prediction_json(mc / "vessel" / "prediction.json",
                                                classes=["background", "vessel", "nerve"])),
         ("{ws}/mc/vessel/prediction.json: classes background,vessel,nerve",
          "{ws}/mc/classes.json says background,nerve,vessel")),
    Case("prediction_json_of_other_classes",
         ensemble_of(lambda mc: prediction_json(mc / "prediction.json",
                                                classes=["background", "nerve"])),
         ("{ws}/mc/prediction.json: classes background,nerve",
          "{ws}/mc/classes.json says background,nerve,vessel")),
    Case("postprocess_of_other_classes",
         lambda ws: ["rle-encode", class_folder(ws), "--out", ws / "s.csv", "--postprocess",
                     write(ws / "post.json", json.dumps({"classes": {
                         name: {"threshold": 0.5, "min_area": 0}
                         for name in ("nerve", "vessel", "artery")}}))],
         ("{ws}/post.json: post-processing for class 'artery', which the maps do not have",
          "nerve, vessel")),
    # 2. reserved names read back
    Case("classes_json_names_a_reserved_name",
         ensemble_of(lambda mc: write(mc / "classes.json", json.dumps(
             {"classes": ["background", "nerve", "prediction.json"]}))),
         ("{ws}/mc/classes.json: class name 'prediction.json' is a name nerveseg gives",)),
    Case("classes_json_names_differing_by_case",
         ensemble_of(lambda mc: write(mc / "classes.json", json.dumps(
             {"classes": ["background", "nerve", "Nerve"]}))),
         ("{ws}/mc/classes.json: the names 'nerve' and 'Nerve' differ only by case",)),
)


@table(*CLASS_FOLDERS)
def test_class_folders_disagreeing_with_classes_json_are_refused(case: Case,
                                                                workspace: Path) -> None:
    run_case(case, workspace)


def joined_csv(*labels: str) -> Callable[[Path], list[str | Path]]:
    """rle-decode of an Understanding-Clouds CSV whose ids are ``labels``."""
    def prepare(ws: Path) -> list[str | Path]:
        rows = "".join(f"{label},1 2\n" for label in labels)
        write(ws / "joined.csv", "Image_Label,EncodedPixels\n" + rows)
        return ["rle-decode", ws / "joined.csv", "--out", ws / "dec", "--size", "8x8"]
    return prepare


NAMES = (
    Case("train_classes_json",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", *TINY, "--classes",
                     "background,nerve,classes.json"],
         ("--classes: class name 'classes.json' is a name nerveseg gives its own files",
          "Reserved names")),
    Case("train_prediction_json_in_capitals",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", *TINY, "--classes",
                     "background,PREDICTION.json"],
         ("'PREDICTION.json' is, ignoring case, a name", "(prediction.json)")),
    Case("train_names_differing_by_case",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", *TINY, "--classes",
                     "background,nerve,NERVE"],
         ("--classes: the names 'nerve' and 'NERVE' differ only by case",)),
    Case("synth_classes_reserved",
         lambda ws: ["synth", ws / "s", "--classes", "background,masks", "--size", "16x16"],
         ("--classes: class name 'masks'",)),
    Case("rle_decode_classes_reserved",
         lambda ws: ["rle-decode", ws / "data" / "train_masks.csv", "--out", ws / "dec",
                     "--classes", "background,state.pt,vessel", "--size", "64x48"],
         ("--classes: class name 'state.pt'",)),
    Case("rle_decode_joined_reserved", joined_csv("1_nerve", "1_classes.json"),
         ("{ws}/joined.csv, line 3: class name 'classes.json' is a name nerveseg gives",)),
    Case("rle_decode_joined_hidden", joined_csv("1_.nerveseg.lock"),
         ("{ws}/joined.csv, line 2", "'.nerveseg.lock' is not a safe file name")),
    Case("rle_decode_joined_differing_by_case", joined_csv("1_nerve", "1_Nerve"),
         ("{ws}/joined.csv: the names 'nerve' and 'Nerve' differ only by case",)),
    Case("score_classes_reserved",
         lambda ws: ["score", ws / "probs", ws / "data" / "test", "--classes",
                     "background,summary.json"],
         ("--classes: class name 'summary.json'",)),
)


@table(*NAMES)
def test_reserved_class_names_are_refused(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# 3. option lists


def train_args(ws: Path, *extra: str) -> list[str | Path]:
    return ["train", ws / "folds.csv", "--out", ws / "run2", *TINY, *extra]


LISTS = (
    Case("save_every_two_epoch_counts", lambda ws: train_args(ws, "--save-every", "5,3"),
         ("--save-every '5,3': '5' and '3' are both epoch counts", "one of each as 5,10m")),
    Case("save_every_two_times", lambda ws: train_args(ws, "--save-every", "10m,1h"),
         ("--save-every '10m,1h': '10m' and '1h' are both times",)),
    Case("save_every_trailing_comma", lambda ws: train_args(ws, "--save-every", "5,"),
         ("--save-every '5,': an empty item",)),
    Case("loss_term_twice", lambda ws: train_args(ws, "--loss", "dice+dice"),
         ("--loss 'dice+dice': 'dice' is given twice",)),
    Case("loss_trailing_plus", lambda ws: train_args(ws, "--loss", "bce+"),
         ("--loss 'bce+': an empty item",)),
    Case("loss_weights_empty_item",
         lambda ws: train_args(ws, "--loss", "bce+dice", "--loss-weights", "1,,1"),
         ("--loss-weights '1,,1': an empty item",)),
    Case("loss_weights_not_a_number",
         lambda ws: train_args(ws, "--loss", "bce+dice", "--loss-weights", "1,x"),
         ("--loss-weights '1,x': 'x' is not a number",)),
    Case("classes_empty_name", lambda ws: train_args(ws, "--classes", "background,,nerve"),
         ("--classes 'background,,nerve': an empty item",)),
    Case("bench_batch_size_twice",
         lambda ws: ["bench", ws / "run", "--batch-sizes", "1,1", "--device", "cpu"],
         ("--batch-sizes '1,1': '1' is given twice", "each once")),
    Case("bench_batch_size_twice_spelt_apart",
         lambda ws: ["bench", ws / "run", "--batch-sizes", "2,4,02", "--device", "cpu"],
         ("--batch-sizes '2,4,02': '02' is given twice (as '2')",)),
    Case("ensemble_weights_empty_item",
         lambda ws: ["ensemble", ws / "probs", shutil.copytree(ws / "probs", ws / "p2"),
                     "--out", ws / "e", "--method", "weighted", "--weights", "1,,2"],
         ("--weights '1,,2': an empty item",)),
    Case("predict_same_run_twice",
         lambda ws: ["predict", ws / "run", ws / "run", ws / "data" / "test", "--out",
                     ws / "maps", *CPU],
         ("{ws}/run: run given twice (as {ws}/run)",)),
    Case("predict_same_run_through_a_symlink",
         lambda ws: ["predict", ws / "run", (ws / "alias").symlink_to(ws / "run") or
                     ws / "alias", ws / "data" / "test", "--out", ws / "maps", *CPU],
         ("{ws}/alias: run given twice (as {ws}/run)",)),
)


@table(*LISTS)
def test_option_lists_refuse_repeats_and_contradictions(case: Case, workspace: Path) -> None:
    run_case(case, workspace)


# --------------------------------------------------------------------------------------------
# 4. messages naming the right problem


def flv_clip(ws: Path) -> Path:
    """A real (MJPG) video in a container suffix nerveseg does not read."""
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
              for p in sorted((ws / "data" / "test").glob("*.tif"))]
    height, width = images[0].shape
    writer = cv2.VideoWriter(str(ws / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0,
                             (width, height))
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    writer.release()
    return (ws / "clip.avi").rename(ws / "clip.flv")


def probs_without_record(ws: Path) -> Path:
    """A copy of ``probs/`` whose prediction.json is a folder."""
    folder = shutil.copytree(ws / "probs", ws / "p2")
    (folder / "prediction.json").unlink()
    (folder / "prediction.json").mkdir()
    return folder


MESSAGES = (
    Case("predict_video_of_an_unread_suffix",
         lambda ws: ["predict", ws / "run", flv_clip(ws), "--out", ws / "maps", *CPU],
         ("{ws}/clip.flv: not an image set", "a video (.mp4 .avi .mov", ".webm)")),
    Case("split_file_of_another_kind",
         lambda ws: ["split", write(ws / "notes.txt", "x"), "--out", ws / "f.csv"],
         ("{ws}/notes.txt: not an image set", "a manifest CSV"),
         {"absent": (".mp4",)}),
    Case("rle_decode_folder_as_csv",
         lambda ws: ["rle-decode", ws / "data", "--out", ws / "dec", "--size", "64x48"],
         ("{ws}/data: is a folder, not a CSV file",), {"absent": ("no such file",)}),
    Case("rle_encode_ids_from_a_folder",
         lambda ws: ["rle-encode", ws / "probs", "--out", ws / "s.csv", "--ids-from",
                     ws / "data"],
         ("{ws}/data: is a folder, not a CSV file",)),
    Case("presence_from_a_folder",
         lambda ws: ["predict", ws / "run", ws / "data" / "test", "--out", ws / "maps", *CPU,
                     "--presence-threshold", "0.5", "--presence-from", ws / "data"],
         ("{ws}/data: is a folder, not a CSV file",)),
    Case("recipe_file_a_folder",
         lambda ws: train_args(ws, "--config", str(ws / "data")),
         ("--config", "{ws}/data", "is a directory")),
    Case("prediction_json_a_folder",
         lambda ws: ["ensemble", ws / "probs", probs_without_record(ws), "--out", ws / "e"],
         ("{ws}/p2/prediction.json: is a folder, not a JSON file",)),
    Case("exported_model_a_folder",
         lambda ws: ["predict", (ws / "m.onnx").mkdir() or ws / "m.onnx", ws / "data" / "test",
                     "--out", ws / "maps", "--engine", "onnxruntime", *CPU],
         ("{ws}/m.onnx: is a folder, not an exported model",)),
    Case("probability_folder_a_file",
         lambda ws: ["ensemble", ws / "probs", ws / "folds.csv", "--out", ws / "e"],
         ("{ws}/folds.csv: is a file, not a probability folder",),
         {"absent": ("no such folder",)}),
    Case("encoder_weights_a_folder",
         lambda ws: ["train", ws / "folds.csv", "--out", ws / "run2", "--arch", "unet",
                     "--encoder", "resnet18", "--encoder-weights", str(ws / "data"),
                     "--epochs", "1", "--device", "cpu", "--workers", "1"],
         ("{ws}/data: is a folder, not an encoder weights file",)),
    Case("split_palette_label_maps_without_label",
         lambda ws: ["split", make_palette_set(ws / "gen"), "--folds", "2", "--out",
                     ws / "f.csv"],
         ("a label map of several classes (values 0, 1, 2)", "pass --label N",
          "or --classes", "to keep every class")),
)


@table(*MESSAGES)
def test_messages_name_the_problem(case: Case, workspace: Path) -> None:
    result = run_case(case, workspace)
    for text in case.options.get("absent", ()):
        assert text not in result.stderr, (text, result.stderr)
