"""``nerveseg train`` through the CLI and the library on tiny synth data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from nerveseg_cli.io.datasets import discover_images, write_manifest
from nerveseg_cli.runs import load_run, read_config
from nerveseg_cli.train import TrainOptions, train
from nerveseg_cli.train.progress import EpochRecord, Reporter
from tests.conftest import assert_one_line_error, run_cli, synth_with_folds

TINY = ["--epochs", "2", "--batch-size", "4", "--device", "cpu", "--workers", "2"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session synth set (3 subjects) with fold = subject % 2, written beside its data."""
    return synth_with_folds(tmp_path_factory.mktemp("train_data"), subjects=3, per_subject=8,
                            test=4, size=(64, 48), seed=3, fold_of=lambda subject: subject % 2)


def test_train_writes_a_complete_run_folder(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli("train", manifest, "--fold", "0", "--out", run, *TINY, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["best_epoch"] in (1, 2) and 0 <= summary["best_val_dice"] <= 1
    for name in ("config.json", "model.safetensors", "last.safetensors", "state.pt",
                 "metrics.csv", "metrics.png", "train.log"):
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "lr", "train_loss", "val_loss", "val_dice",
                                     "val_presence_accuracy", "seconds"]
    assert metrics["epoch"].tolist() == [1, 2]
    config = read_config(run)
    assert config.geometry.mode == "pad" and (config.geometry.width,
                                              config.geometry.height) == (64, 64)
    assert config.training["fold"] == "0" and config.model.arch == "unet"
    _, model = load_run(run)
    logits, presence = model(torch.zeros(1, 1, 64, 64))
    assert logits.shape == (1, 1, 64, 64) and presence is None
    assert "epoch   2" in (run / "train.log").read_text()


def test_validation_dice_is_the_score_metric(manifest: Path, tmp_path: Path) -> None:
    """Re-scoring the saved best model on fold 0 reproduces the logged best Dice."""
    from nerveseg_cli.score import counts_from_histograms, dice, value_histograms
    from nerveseg_cli.train.data import select_folds

    result = train(TrainOptions(manifest=str(manifest), fold="0", epochs=2, batch_size=4,
                                device="cpu", workers=2), tmp_path / "run")
    config, model = load_run(tmp_path / "run")
    scores = []
    for sample in select_folds(manifest, "0").val:
        from nerveseg_cli.io.images import read_image, read_mask

        image, truth = read_image(sample.image), read_mask(sample.mask)
        x = torch.from_numpy(config.geometry.forward(image)).float()[None, None] / 255
        with torch.no_grad():
            prob = torch.sigmoid(model((x - config.mean) / config.std)[0])
        prob = config.geometry.backward(prob, *image.shape)
        values = (prob[0, 0] * 255).round().to(torch.uint8).numpy()
        hists = value_histograms(values, truth)
        scores.append(float(dice(counts_from_histograms(hists[0][None], hists[1][None],
                                                        127))[0]))
    assert np.mean(scores) == pytest.approx(result.best_dice, abs=1e-9)


@pytest.mark.parametrize("options", [
    ["--arch", "fpn", "--encoder", "resnet18", "--loss", "focal+dice", "--loss-weights", "1,1",
     "--size", "64x32", "--optimizer", "sgd", "--scheduler", "step"],
    ["--arch", "unet", "--decoder-attention", "scse", "--presence-head", "--loss", "lovasz",
     "--ems-kernel", "5", "--ems-epsilon", "0.1", "--balance", "1:1", "--rotate", "15:0.5",
     "--brightness", "0.1:0.5", "--noise", "0.03:0.5", "--scale", "0.1:0.5",
     "--scheduler", "poly", "--accumulate", "2", "--channels-last"],
    ["--arch", "linknet", "--loss", "tversky+bce", "--optimizer", "rmsprop", "--fold", "all",
     "--patience", "1"],
])
def test_architectures_losses_and_options(manifest: Path, tmp_path: Path,
                                          options: list[str]) -> None:
    result = run_cli("train", manifest, "--out", tmp_path / "run", *TINY, *options)
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    if "--presence-head" in options:
        _, model = load_run(tmp_path / "run")
        assert model(torch.zeros(2, 1, 64, 64))[1].shape == (2,)
    assert config["training"]["loss"] == options[options.index("--loss") + 1]


def test_resume_after_interruption_equals_uninterrupted(manifest: Path, tmp_path: Path) -> None:
    options = TrainOptions(manifest=str(manifest), fold="1", epochs=3, batch_size=4,
                           device="cpu", workers=1, deterministic=True, presence_head=True,
                           rotate="10:0.5", noise="0.05:0.5", seed=5)
    train(options, tmp_path / "straight")

    class Crash(Exception):
        pass

    class CrashAfterFirst(Reporter):
        def epoch_end(self, record: EpochRecord, best: bool) -> None:
            if record.epoch == 1:
                raise Crash

    with pytest.raises(Crash):
        train(options, tmp_path / "resumed", reporter=CrashAfterFirst())
    train(options, tmp_path / "resumed", resume=True)
    for name in ("last.safetensors", "model.safetensors"):
        a = load_file(str(tmp_path / "straight" / name))
        b = load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert (tmp_path / "straight" / "metrics.csv").read_text().count("\n") == \
        (tmp_path / "resumed" / "metrics.csv").read_text().count("\n") == 4


def test_resume_cli_takes_options_from_the_run(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("train", manifest, "--out", run, *TINY, "--lr", "0.003").exit_code == 0
    assert_one_line_error(run_cli("train", "--resume", run, "--lr", "0.01"),
                          "cannot resume with different options", "lr")
    result = run_cli("train", "--resume", run, "--workers", "1")
    assert result.exit_code == 0, result.stderr


def test_two_process_ddp_on_gloo(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "nerveseg_cli", "train", str(manifest), "--out", str(run), "--fold", "0",
         "--epochs", "2", "--batch-size", "2", "--device", "cpu", "--workers", "1", "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]  # one writer: rank 0
    assert (run / "model.safetensors").is_file()


def test_bad_inputs(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_one_line_error(run_cli("train", manifest, "--out", out, "--arch", "unett", *TINY),
                          "unknown architecture 'unett'", "did you mean unet")
    assert_one_line_error(run_cli("train", manifest, "--out", out, "--encoder", "resnet35",
                                  *TINY), "unknown encoder 'resnet35'", "resnet34")
    assert_one_line_error(run_cli("train", manifest, "--out", out, "--size", "60x40", *TINY),
                          "not a multiple of 32", "--pad")
    assert_one_line_error(run_cli("train", manifest, "--out", out, "--fold", "7", *TINY),
                          "fold 7 has no images")
    images_only = tmp_path / "unlabeled.csv"
    samples = discover_images(manifest.parent / "data" / "test")
    write_manifest(images_only, samples, extra={"fold": [0] * len(samples)})
    assert_one_line_error(run_cli("train", images_only, "--out", out, "--fold", "all", *TINY),
                          "have no mask")
    no_folds = tmp_path / "nofold.csv"
    write_manifest(no_folds, discover_images(manifest.parent / "data" / "train"))
    assert_one_line_error(run_cli("train", no_folds, "--out", out, *TINY),
                          "no fold column", "nerveseg split")
    out.mkdir()
    (out / "x").write_text("")
    assert_one_line_error(run_cli("train", manifest, "--out", out, *TINY), "--overwrite")
    assert_one_line_error(run_cli("train", "--resume", tmp_path / "nothing"), "not a run folder")


def test_encoder_weights_offline_and_local_files(manifest: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Fail at once as an offline machine does, instead of retrying the network for 20 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = run_cli("train", manifest, "--out", tmp_path / "a", "--encoder-weights",
                     "imagenet", *TINY)
    assert_one_line_error(result, "could not download imagenet weights", "--encoder-weights PATH")
    from safetensors.torch import save_file

    from nerveseg_cli.models import ModelConfig, build_model

    encoder = build_model(ModelConfig(in_channels=3)).net.encoder
    weights = tmp_path / "resnet18.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()},
              str(weights))
    result = run_cli("train", manifest, "--out", tmp_path / "b", "--encoder-weights", weights,
                     *TINY)
    assert result.exit_code == 0, result.stderr  # 3-channel conv1 summed for 1 channel
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, bad)
    assert_one_line_error(run_cli("train", manifest, "--out", tmp_path / "c",
                                  "--encoder-weights", bad, *TINY), "keys do not fit the encoder")
