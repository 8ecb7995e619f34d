"""DistributedDataParallel on the CPU: two gloo processes under torchrun train one architecture
of every family the registry ships (and the presence heads), see every training image exactly
once per epoch with a short last batch, augment differently, and stop on one process's signal
and resume to the weights of the uninterrupted run. One torchrun launch runs every case.

The CUDA side (NCCL, each process on its own GPU) runs in benchmarks/bench_cuda.py; what of its
logic needs no GPU is tested here and in test_cuda_paths.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import synth_with_folds

HERE = Path(__file__).resolve().parent
BASE = {"fold": "0", "epochs": 2, "batch_size": 2, "device": "cpu", "workers": 1,
        "size": "64x64", "seed": 11, "rotate": "10:0.5", "noise": "0.05:0.5"}
FAMILIES = {  # one architecture of each family, at its smallest
    "smp-pspnet": {"arch": "pspnet"},  # encoder depth 3: parameters without a gradient
    "smp-unet-presence": {"arch": "unet", "presence_head": True},
    "unet-plain": {"arch": "unet-plain", "width": 2},
    "r2unet": {"arch": "r2unet", "width": 2},
    "attention-unet": {"arch": "attention-unet", "width": 2},
    "inception-two-head": {"arch": "inception-unet", "width": 16, "presence_head": True},
    "fcn8s": {"arch": "fcn8s", "width": 2},
    "ragcm": {"arch": "ragcm"},
}
RESUMED = {"arch": "unet-plain", "width": 2, "epochs": 3, "deterministic": True,
           "presence_head": True, "seed": 5}


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case trained by one 2-process torchrun; what each process recorded."""
    root = tmp_path_factory.mktemp("ddp")
    # 4 subjects of 3 frames, subject 1 validates: 9 training frames, so with batch 2 on 2
    # processes the epoch is 4 + 4 + 1 frames, and the lone last frame joins the batch before.
    manifest = synth_with_folds(root, subjects=4, per_subject=3, test=1, size=(64, 48), seed=3,
                                fold_of=lambda subject: 0 if subject == 1 else 1)
    cases = [{"name": name, "out": str(root / name),
              "options": {**BASE, "manifest": str(manifest), **extra}}
             for name, extra in FAMILIES.items()]
    for name, stop_at in (("straight", None), ("resumed", [2, 1, 1])):
        cases.append({"name": name, "out": str(root / name), "stop_at": stop_at,
                      "options": {**BASE, "manifest": str(manifest), **RESUMED}})
    (root / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "ddp_worker.py"), str(root / "cases.json"), str(root)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)})
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"root": root, "ranks": ranks}


@pytest.mark.parametrize("name", [*FAMILIES, "straight", "resumed"])
def test_every_family_trains_under_ddp(ddp: dict[str, Any], name: str) -> None:
    for rank in ddp["ranks"]:
        assert rank["outcomes"][name].startswith("ok"), rank["outcomes"][name]
    epochs = RESUMED["epochs"] if name in ("straight", "resumed") else BASE["epochs"]
    metrics = pd.read_csv(ddp["root"] / name / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, epochs + 1))  # one writer: rank 0


def steps_of(ddp: dict[str, Any], case: str) -> list[dict[str, Any]]:
    return [{**r, "rank": rank} for rank, data in enumerate(ddp["ranks"])
            for r in data["records"] if r["case"] == case]


@pytest.mark.parametrize("name", FAMILIES)
def test_each_image_once_per_epoch_across_processes(ddp: dict[str, Any], name: str) -> None:
    steps = steps_of(ddp, name)
    by_epoch: dict[int, Counter] = defaultdict(Counter)
    for record in steps:
        by_epoch[record["epoch"]].update(record["rows"])
    assert sorted(by_epoch) == [1, 2]
    rows = steps[0]["train_rows"]
    for counts in by_epoch.values():
        assert counts == Counter(range(rows)), counts  # every row, once
    per_rank = Counter((r["rank"], r["epoch"]) for r in steps)
    assert len(set(per_rank.values())) == 1  # every process took as many steps


def test_processes_draw_different_augmentations(ddp: dict[str, Any]) -> None:
    steps = steps_of(ddp, "unet-plain")
    draws = {(r["rank"], r["epoch"], r["step"]): r["draws"] for r in steps}
    pairs = [(draws[(0, e, s)], draws[(1, e, s)]) for (rank, e, s) in draws if rank == 0]
    assert pairs and all(a != b for a, b in pairs)
    # and each process's draws change from step to step and epoch to epoch
    assert len({tuple(d) for d in draws.values()}) == len(draws)


def test_presence_targets_follow_their_images(ddp: dict[str, Any]) -> None:
    for record in steps_of(ddp, "smp-unet-presence"):
        assert record["present"] == [float(v) for v in record["masks_any"]]


def test_a_signal_on_one_process_stops_both_and_the_resume_is_exact(
        ddp: dict[str, Any]) -> None:
    root = ddp["root"]
    for name in ("last.safetensors", "model.safetensors"):
        a, b = load_file(str(root / "straight" / name)), load_file(str(root / "resumed" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    straight = pd.read_csv(root / "straight" / "metrics.csv")
    resumed = pd.read_csv(root / "resumed" / "metrics.csv")
    # the stopped epoch's loss was gathered from both processes before the save
    assert resumed["train_loss"].tolist() == pytest.approx(straight["train_loss"].tolist(),
                                                           rel=1e-9)
    for rank in ddp["ranks"]:  # process 1 got the signal, both stopped at the same step
        assert "in epoch 2 (step 1/2)" in rank["outcomes"]["resumed"], rank["outcomes"]
    second = [r for r in steps_of(ddp, "resumed") if r["epoch"] == 2]
    # after the resume each process took the remaining step only
    assert Counter(r["step"] for r in second) == Counter({0: 2, 1: 2})
