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
from nerveseg_cli.io.runs import load_run, read_config
from nerveseg_cli.train.engine import train
from nerveseg_cli.train.options import TrainOptions
from nerveseg_cli.train.progress import Reporter
from tests.conftest import (
    Crash,
    assert_one_line_error,
    crash_after_first_epoch,
    run_cli,
    synth_with_folds,
)

TINY = ["--epochs", "2", "--batch-size", "4", "--device", "cpu", "--workers", "2"]
# The smallest network, for what does not depend on the architecture (saving, resuming,
# scoring); the default one (unet, resnet34) trains where it does, and in the resume tests.
SMALL = {"arch": "unet-plain", "width": 2}


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


def test_fold_all_prints_no_validation_and_no_best(manifest: Path, tmp_path: Path) -> None:
    """Without validation there is no validation figure and no best epoch: the epoch lines,
    train.log, metrics.csv and the summary show what exists, and say that model.safetensors
    holds the last epoch (which it does)."""
    run = tmp_path / "run"
    result = run_cli("train", manifest, "--fold", "all", "--out", run, "--arch", "unet-plain",
                     "--width", "2", *TINY, "--json")
    assert result.exit_code == 0, result.stderr
    log = (run / "train.log").read_text().splitlines()
    assert len(log) == 2
    for line in [*log, *result.stderr.splitlines()]:
        assert "nan" not in line and "*best" not in line and "val " not in line, line
    assert all(line.endswith("(no validation: model.safetensors holds the last epoch)")
               for line in log), log
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[1].split(",")[3:6] == ["", "", ""], rows  # val_loss, val_dice, presence
    summary = json.loads(result.stdout)
    assert summary["best_epoch"] is None and summary["best_val_dice"] is None
    assert summary["model"] == "last epoch (no validation)"
    best, last = load_file(str(run / "model.safetensors")), load_file(str(run / "last.safetensors"))
    assert all(torch.equal(best[k], last[k]) for k in last)


def test_validation_dice_is_the_score_metric(manifest: Path, tmp_path: Path) -> None:
    """Re-scoring the saved best model on fold 0 reproduces the logged best Dice."""
    from nerveseg_cli.evaluation.score import counts_from_histograms, dice, value_histograms
    from nerveseg_cli.train.data import select_folds

    result = train(TrainOptions(manifest=str(manifest), fold="0", epochs=2, batch_size=4,
                                device="cpu", workers=2, **SMALL), tmp_path / "run")
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


@pytest.fixture(scope="module")
def straight(manifest: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[TrainOptions, Path]:
    """A deterministic run (augmented, with a presence head) straight through: what the runs
    interrupted and resumed below must equal, to the bit. Fold 0 validates, so 16 training
    images: 8 steps an epoch at batch 2."""
    options = TrainOptions(manifest=str(manifest), fold="0", epochs=3, batch_size=2,
                           device="cpu", workers=1, deterministic=True, presence_head=True,
                           rotate="10:0.5", noise="0.05:0.5", seed=2)
    out = tmp_path_factory.mktemp("straight") / "run"
    train(options, out)
    return options, out


def test_resume_after_interruption_equals_uninterrupted(
        straight: tuple[TrainOptions, Path], tmp_path: Path) -> None:
    options, straight_run = straight

    with pytest.raises(Crash):
        train(options, tmp_path / "resumed", reporter=crash_after_first_epoch())
    train(options, tmp_path / "resumed", resume=True)
    for name in ("last.safetensors", "model.safetensors"):
        a = load_file(str(straight_run / name))
        b = load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert (straight_run / "metrics.csv").read_text().count("\n") == \
        (tmp_path / "resumed" / "metrics.csv").read_text().count("\n") == 4


def test_resume_cli_takes_options_from_the_run(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("train", manifest, "--out", run, *TINY, "--lr", "0.003", "--arch",
                   SMALL["arch"], "--width", str(SMALL["width"])).exit_code == 0
    assert_one_line_error(run_cli("train", "--resume", run, "--lr", "0.01"),
                          "cannot resume with different options", "lr")
    result = run_cli("train", "--resume", run, "--workers", "1")
    assert result.exit_code == 0, result.stderr


def test_two_process_ddp_on_gloo(manifest: Path, tmp_path: Path) -> None:
    """The real command line under torchrun: the CLI joins the process group itself and one
    process writes the run. Every architecture family under DDP, the data each process sees
    and a signal to one process: tests/train/test_distributed.py (one launch, the library)."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "nerveseg_cli", "train", str(manifest), "--out", str(run), "--fold", "0",
         "--arch", "unet-plain", "--width", "2",
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


def _stopped(options: TrainOptions, tmp_path: Path, stop_at_step: int) -> Path:
    """The run of ``options`` sent SIGTERM (to this process) after its ``stop_at_step``-th
    step in all."""
    import signal

    from nerveseg_cli.train.signals import TrainingInterrupted

    class SignalAtStep(Reporter):
        steps = 0

        def step(self) -> None:
            self.steps += 1
            if self.steps == stop_at_step:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag

    with pytest.raises(TrainingInterrupted) as stopped:
        train(options, tmp_path / "stopped", reporter=SignalAtStep())
    assert stopped.value.exit_code == 143 and "SIGTERM in epoch" in str(stopped.value)
    return tmp_path / "stopped"


def test_sigterm_mid_epoch_then_resume_equals_a_straight_run(
        straight: tuple[TrainOptions, Path], tmp_path: Path) -> None:
    """The state saved in the middle of an epoch (its batches, the step, the loss so far)
    lets --resume finish that epoch as if nothing had happened."""
    per_epoch = 8  # 16 training images (subjects 1 and 3) at batch 2
    options, straight = straight
    stopped = _stopped(options, tmp_path, per_epoch + 2)
    data = torch.load(stopped / "state.pt", weights_only=True)
    assert data["epoch"] == 1 and data["progress"]["step"] == 2
    assert data["progress"]["sizes"].tolist() == [2] * per_epoch
    train(options, stopped, resume=True)
    for name in ("last.safetensors", "model.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(stopped / name))
        assert all(torch.equal(a[key], b[key]) for key in a), name
    assert pd.read_csv(straight / "metrics.csv")["train_loss"].tolist() == \
        pd.read_csv(stopped / "metrics.csv")["train_loss"].tolist()


def _count_saves(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the file names of every checkpoint the engine writes."""
    from nerveseg_cli.train import engine

    saves: list[list[str]] = []
    original = engine.atomic_write_files

    def counting(files: list[tuple[Path, bytes]]) -> None:
        saves.append([path.name for path, _ in files])
        original(files)

    monkeypatch.setattr(engine, "atomic_write_files", counting)
    return saves


@pytest.mark.parametrize(("save_every", "expected"), [
    ("10m", 1),  # the default: a short run saves once, at its end
    ("1", 3), ("2", 2), ("end", 1),
])
def test_save_every_decides_how_often_the_checkpoint_is_written(
        manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, save_every: str,
        expected: int) -> None:
    saves = _count_saves(monkeypatch)
    result = train(TrainOptions(manifest=str(manifest), fold="0", epochs=3, batch_size=4,
                                device="cpu", workers=1, save_every=save_every, **SMALL),
                   tmp_path / "run")
    assert len(saves) == expected, saves
    assert all({"last.safetensors", "state.pt"} <= set(names) for names in saves)
    # the best weights are written with the save that follows their epoch, and are right
    assert any("model.safetensors" in names for names in saves)
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [1, 2, 3]
    _, model = load_run(tmp_path / "run")
    assert result.best_epoch in (1, 2, 3) and model is not None


def test_best_weights_kept_in_memory_are_the_best_epochs(manifest: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Saved once at the end, model.safetensors holds the best epoch's weights, not the last
    ones: the same as a run that saved every epoch."""
    options = TrainOptions(manifest=str(manifest), fold="0", epochs=4, batch_size=4,
                           device="cpu", workers=1, deterministic=True, lr=0.05, seed=1,
                           **SMALL)
    every = train(TrainOptions.from_dict({**options.to_dict(), "save_every": "1"}),
                  tmp_path / "every")
    once = train(options, tmp_path / "once")
    assert every.best_epoch == once.best_epoch
    a = load_file(str(tmp_path / "every" / "model.safetensors"))
    b = load_file(str(tmp_path / "once" / "model.safetensors"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    if once.best_epoch != 4:  # then the best differs from the last weights
        last = load_file(str(tmp_path / "once" / "last.safetensors"))
        assert not all(torch.equal(a[key], last[key]) for key in a)


def test_a_time_policy_saves_inside_long_epochs(manifest: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With the time always up, every optimizer step but an epoch's last saves (in the middle
    of the epoch), and every epoch end; the run still ends as planned."""
    from nerveseg_cli.train import checkpoints

    saves = _count_saves(monkeypatch)
    monkeypatch.setattr(checkpoints.SavePolicy, "time_due", lambda self, seconds: True)
    train(TrainOptions(manifest=str(manifest), fold="0", epochs=2, batch_size=4, device="cpu",
                       workers=1, save_every="1s", **SMALL), tmp_path / "run")
    steps = 4  # 16 training images at batch 4
    assert len(saves) == 2 * (steps - 1) + 2
    data = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert data["epoch"] == 2 and "progress" not in data  # the last save: the end
