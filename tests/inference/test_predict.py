"""``nerveseg predict``: run folders + images -> probability folders, TTA, ASME, presence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nerveseg_cli.inference.engines import _flip_tensor, flip_array
from nerveseg_cli.inference.predict import TTA_VARIANTS
from nerveseg_cli.io.datasets import discover_images, write_manifest
from nerveseg_cli.io.images import read_image
from nerveseg_cli.io.outputs import write_image
from nerveseg_cli.train.engine import train
from nerveseg_cli.train.options import TrainOptions
from tests.conftest import assert_one_line_error, run_cli, synth_with_folds


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny runs (one with a presence head, one resized) on a small synth set."""
    root = tmp_path_factory.mktemp("predict")
    manifest = synth_with_folds(root, subjects=2, per_subject=6, test=5, size=(60, 44), seed=2)
    common = {"manifest": str(manifest), "fold": "0", "epochs": 1, "batch_size": 4,
              "device": "cpu", "workers": 1}
    train(TrainOptions(**common, presence_head=True), root / "run_pad")
    train(TrainOptions(**common, size="64x32"), root / "run_resize")
    train(TrainOptions(**{**common, "fold": "1"}, size="64x32"), root / "run_fold1")
    return {"root": root, "pad": root / "run_pad", "resize": root / "run_resize",
            "fold1": root / "run_fold1", "manifest": manifest,
            "test": root / "data" / "test", "train": root / "data" / "train"}


def test_flip_variants_are_their_own_inverse() -> None:
    """Both engines' flips (torch tensors, numpy arrays) undo themselves and agree."""
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    for variants in TTA_VARIANTS.values():
        for variant in variants:
            assert torch.equal(_flip_tensor(_flip_tensor(x, variant), variant), x)
            array = x.numpy()
            np.testing.assert_array_equal(flip_array(flip_array(array, variant), variant), array)
            np.testing.assert_array_equal(flip_array(array, variant),
                                          _flip_tensor(x, variant).numpy())
    assert torch.equal(_flip_tensor(x, (False, True)), x.flip(-1))


def test_tta_of_a_flip_equivariant_model_changes_nothing(trained: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """With every TTA variant inverted exactly, a model that is itself flip-equivariant gives
    the same map with and without TTA; checked on a per-pixel model (1x1 behaviour)."""
    from nerveseg_cli.inference.engines import ModelInfo, TorchEngine
    from nerveseg_cli.inference.predict import PredictOptions, Predictor
    from nerveseg_cli.io.runs import read_config
    from nerveseg_cli.models import SegmentationNet

    config = read_config(trained["pad"])
    net = SegmentationNet(torch.nn.Conv2d(1, 1, 1), 32, False)
    run = TorchEngine(ModelInfo.from_run(trained["pad"], config, False), net,
                      torch.device("cpu"))
    predictor = Predictor([trained["pad"]], PredictOptions(tta="flips", device="cpu"))
    image = np.random.default_rng(0).integers(0, 255, (44, 60), dtype=np.uint8)
    stacks, _ = predictor.run_batch(run, [image])
    assert stacks[0].shape == (4, 44, 60)
    np.testing.assert_allclose(stacks[0], np.broadcast_to(stacks[0][0], stacks[0].shape),
                               atol=1e-6)


def test_predict_writes_probability_folder_at_original_size(trained: dict[str, Path],
                                                            tmp_path: Path) -> None:
    out = tmp_path / "probs"
    result = run_cli("predict", trained["pad"], trained["test"], "--out", out, "--tta",
                     "flips", "--tta-merge", "asme", "--device", "cpu", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert json.loads(result.stdout)["written"] == 5
    for sample in discover_images(trained["test"]):
        values = read_image(out / f"{sample.id}.png")
        assert values.shape == read_image(sample.image).shape == (44, 60)
    record = json.loads((out / "prediction.json").read_text())
    assert record["command"] == "predict" and record["options"]["tta"] == "flips"
    assert "classes" not in record  # binary provenance as before classes existed
    presence = pd.read_csv(out / "presence.csv", dtype={"id": str})
    assert sorted(presence["id"]) == sorted(str(i) for i in range(1, 6))
    assert presence["presence"].between(0, 1).all()
    # the folder chains into rle-encode and score
    assert run_cli("rle-encode", out, "--out", tmp_path / "sub.csv").exit_code == 0


def test_several_runs_are_merged_and_mean_matches_reference(trained: dict[str, Path],
                                                            tmp_path: Path) -> None:
    a, b, both = tmp_path / "a", tmp_path / "b", tmp_path / "both"
    for run, out in ((trained["pad"], a), (trained["resize"], b)):
        assert run_cli("predict", run, trained["test"], "--out", out, "--device",
                       "cpu").exit_code == 0
    assert run_cli("predict", trained["pad"], trained["resize"], trained["test"], "--out", both,
                   "--device", "cpu").exit_code == 0
    for i in range(1, 6):
        expected = (read_image(a / f"{i}.png").astype(float) +
                    read_image(b / f"{i}.png").astype(float)) / 2
        # each member was rounded to 8 bits before averaging here, not in predict
        assert np.abs(read_image(both / f"{i}.png") - expected).max() <= 1.0


def test_presence_gating_and_presence_from(trained: dict[str, Path], tmp_path: Path) -> None:
    presence = tmp_path / "presence.csv"
    presence.write_text("id,presence\n" + "".join(f"{i},{0.9 if i % 2 else 0.1}\n"
                                                  for i in range(1, 6)))
    out = tmp_path / "gated"
    result = run_cli("predict", trained["resize"], trained["test"], "--out", out,
                     "--presence-from", presence, "--presence-threshold", "0.5",
                     "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    for i in (2, 4):
        assert read_image(out / f"{i}.png").max() == 0
    written = pd.read_csv(out / "presence.csv", dtype={"id": str}).set_index("id")
    assert written.loc["2", "presence"] == pytest.approx(0.1)


def test_masks_resume_and_parts(trained: dict[str, Path], tmp_path: Path) -> None:
    out, masks = tmp_path / "p", tmp_path / "m"
    assert run_cli("predict", trained["pad"], trained["test"], "--out", out, "--masks", masks,
                   "--threshold", "0.3", "--part", "1/2", "--device", "cpu").exit_code == 0
    first = sorted(p.name for p in out.glob("*.png"))
    assert first == ["1.png", "3.png", "5.png"]
    assert sorted(p.name for p in masks.glob("*.png")) == first
    assert set(np.unique(read_image(masks / "1.png"))) <= {0, 255}
    (out / "3.png").unlink()
    # a resume with other settings would mix two sets of maps: refused, naming the option
    assert_one_line_error(run_cli("predict", trained["pad"], trained["test"], "--out", out,
                                  "--masks", masks, "--resume", "--device", "cpu"),
                          "was written with --threshold 0.3, not 0.5")
    result = run_cli("predict", trained["pad"], trained["test"], "--out", out, "--masks",
                     masks, "--threshold", "0.3", "--resume", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["written"], data["skipped (resume)"]) == (3, 2)  # 2, 3, 4 written now
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i}.png" for i in range(1, 6)]


def test_bad_inputs(trained: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(run_cli("predict", tmp_path / "norun", trained["test"], "--out",
                                  tmp_path / "o", "--device", "cpu"), "not a run folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((trained["pad"] / "config.json").read_text())
    assert_one_line_error(run_cli("predict", broken, trained["test"], "--out", tmp_path / "o",
                                  "--device", "cpu"), "model.safetensors", "missing")
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((trained["pad"] / "config.json").read_text())
    config["model"]["encoder"] = "resnet34"
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes((trained["pad"] / "model.safetensors")
                                              .read_bytes())
    assert_one_line_error(run_cli("predict", other, trained["test"], "--out", tmp_path / "o",
                                  "--device", "cpu"), "do not fit")
    three = tmp_path / "three"
    three.mkdir()
    config = json.loads((trained["resize"] / "config.json").read_text())
    config["model"]["in_channels"] = 3
    (three / "config.json").write_text(json.dumps(config))
    (three / "model.safetensors").write_bytes((trained["resize"] / "model.safetensors")
                                              .read_bytes())
    result = run_cli("predict", trained["resize"], three, trained["test"], "--out",
                     tmp_path / "o", "--device", "cpu")
    assert result.exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("predict", trained["pad"], empty, "--out", tmp_path / "o",
                                  "--device", "cpu"), "no images found")
    big = tmp_path / "big"
    write_image(big / "1.png", np.zeros((100, 100), np.uint8))
    assert_one_line_error(run_cli("predict", trained["pad"], big, "--out", tmp_path / "o2",
                                  "--device", "cpu"), "padding canvas")
    assert_one_line_error(run_cli("predict", trained["pad"], trained["test"], "--out",
                                  tmp_path / "o3", "--tta", "rot90"), "--tta")
    assert_one_line_error(run_cli("predict", trained["pad"], trained["test"], "--out",
                                  tmp_path / "o3", "--part", "3/2"), "--part")


def test_out_of_fold_predicts_each_image_with_the_run_that_held_it_out(
        trained: dict[str, Path], tmp_path: Path) -> None:
    """--out-of-fold: fold-0 images come from the fold-0 run alone, fold-1 images from the
    fold-1 run alone, whatever order the runs are given in; one folder holds them all."""
    manifest, oof = trained["manifest"], tmp_path / "oof"
    result = run_cli("predict", trained["fold1"], trained["resize"], manifest, "--out-of-fold",
                     "--out", oof, "--device", "cpu", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    table = pd.read_csv(manifest, dtype={"id": str})
    assert json.loads(result.stdout)["written"] == len(table)
    alone = {}
    for fold, run in ((0, trained["resize"]), (1, trained["fold1"])):
        alone[fold] = tmp_path / f"alone{fold}"
        assert run_cli("predict", run, manifest, "--out", alone[fold], "--device",
                       "cpu").exit_code == 0
    for row in table.itertuples():
        expected = read_image(alone[row.fold] / f"{row.id}.png")
        np.testing.assert_array_equal(read_image(oof / f"{row.id}.png"), expected)
    record = json.loads((oof / "prediction.json").read_text())
    assert record["options"]["out_of_fold"] == {"0": str(trained["resize"]),
                                                "1": str(trained["fold1"])}


def test_out_of_fold_refuses_what_cannot_be_out_of_fold(trained: dict[str, Path],
                                                        tmp_path: Path) -> None:
    manifest = trained["manifest"]
    assert_one_line_error(run_cli("predict", trained["pad"], trained["resize"], manifest,
                                  "--out-of-fold", "--out", tmp_path / "a", "--device", "cpu"),
                          "both validated on fold 0")
    assert_one_line_error(run_cli("predict", trained["pad"], manifest, "--out-of-fold",
                                  "--out", tmp_path / "b", "--device", "cpu"),
                          "no run validated on fold(s) 1")
    assert_one_line_error(run_cli("predict", trained["pad"], trained["test"], "--out-of-fold",
                                  "--out", tmp_path / "c", "--device", "cpu"),
                          "needs a split manifest")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_out_of_fold_rows_left_out_of_every_fold_get_all_runs(trained: dict[str, Path],
                                                              tmp_path: Path) -> None:
    from nerveseg_cli.io.datasets import read_manifest_columns

    samples, columns = read_manifest_columns(trained["manifest"])
    folds = list(columns["fold"])
    folds[0] = "-1"  # e.g. left out by split --balance: no run trained on it
    manifest = tmp_path / "manifest.csv"
    write_manifest(manifest, samples, extra={"fold": folds})
    oof, both = tmp_path / "oof", tmp_path / "both"
    runs = (trained["resize"], trained["fold1"])
    assert run_cli("predict", *runs, manifest, "--out-of-fold", "--out", oof, "--device",
                   "cpu").exit_code == 0
    assert run_cli("predict", *runs, manifest, "--out", both, "--device", "cpu").exit_code == 0
    first = samples[0].id
    np.testing.assert_array_equal(read_image(oof / f"{first}.png"),
                                  read_image(both / f"{first}.png"))


def test_part_writers_keep_every_presence_row(trained: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A --part writer merges its presence rows, at its end and under the folder's lock, with
    those another part wrote meanwhile, instead of replacing the file with its own share."""
    import pandas as pd

    from nerveseg_cli.inference import predict as predict_module
    from nerveseg_cli.io.probmaps import read_presence, write_presence

    whole = tmp_path / "whole"
    assert run_cli("predict", trained["pad"], trained["test"], "--out", whole, "--device",
                   "cpu").exit_code == 0
    everything = read_presence(whole / "presence.csv")
    out = tmp_path / "parts"
    run_groups = predict_module._predict_groups

    def other_part_finishes_meanwhile(*args: object, **kwargs: object) -> None:
        run_groups(*args, **kwargs)
        write_presence(out / "presence.csv", {k: v for k, v in everything.items()
                                              if int(k) % 2 == 0})  # part 2/2's rows

    monkeypatch.setattr(predict_module, "_predict_groups", other_part_finishes_meanwhile)
    result = run_cli("predict", trained["pad"], trained["test"], "--out", out, "--part", "1/2",
                     "--resume", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    rows = pd.read_csv(out / "presence.csv", dtype={"id": str})
    assert rows["id"].tolist() == list(everything)  # every image, in id order
    assert rows["presence"].tolist() == pytest.approx(list(everything.values()))
