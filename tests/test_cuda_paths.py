"""The logic of the CUDA paths that needs no GPU, on the CPU: the device and AMP choices with
faked GPUs, joining the process group on this process's own GPU, the dry step (parameters
without a gradient, --deterministic refused in one line), a step that never waits for the
device, presence targets that follow their images out of a memmap cache, non-finite losses
under fp16 and bf16, and the batches shared out between processes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nerveseg_cli import device
from nerveseg_cli.device import derived_seed, resolve_amp, resolve_device
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.models import ModelConfig, build_model
from nerveseg_cli.train import data as train_data
from nerveseg_cli.train import engine
from nerveseg_cli.train.distributed import Distributed
from nerveseg_cli.train.dry_step import dry_step
from nerveseg_cli.train.engine import train
from nerveseg_cli.train.options import TrainOptions
from nerveseg_cli.train.state import TrainState
from tests.conftest import synth_with_folds

CAPABILITIES = {0: (7, 5), 1: (8, 0), 2: (6, 0), 3: (9, 0)}  # T4, A100, P100, H100


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Four visible GPUs of mixed generations; current device 2; what was called."""
    calls: dict[str, Any] = {"set_device": [], "init": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(CAPABILITIES))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: CAPABILITIES[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", _must_not_be_asked)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(d))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(uuid=f"fake-{torch.device('cuda', i).index}"))
    monkeypatch.setenv(device.GPU_LOCKS_ENV, str(tmp_path / "gpu-locks"))
    monkeypatch.setattr(device, "_claimed", {})
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: bool(calls["init"]))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: calls["init"].append((backend, kw,
                                                                    list(calls["set_device"]))))
    return calls


def _must_not_be_asked(*args: Any, **kwargs: Any) -> bool:
    raise AssertionError("is_bf16_supported() counts emulation and asks the current device")


@pytest.mark.parametrize(("index", "expected"), [(0, torch.float16), (1, torch.bfloat16),
                                                 (2, torch.float16), (3, torch.bfloat16)])
def test_amp_auto_follows_the_chosen_gpus_capability(fake_gpus: dict, index: int,
                                                     expected: torch.dtype) -> None:
    assert resolve_amp("auto", torch.device("cuda", index)) is expected
    assert resolve_amp("fp16", torch.device("cuda", index)) is torch.float16
    assert resolve_amp("off", torch.device("cuda", index)) is None


def test_cuda_devices_carry_their_index(fake_gpus: dict,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cuda") == torch.device("cuda", 2)  # the current one
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:3", local_rank=1) == torch.device("cuda", 3)
    with pytest.raises(NervesegError, match="process LOCAL_RANK 4: no such GPU"):
        resolve_device("cuda", local_rank=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    with pytest.raises(NervesegError, match=r"--device cuda:7: no such GPU \(4 visible, "
                                            "CUDA_VISIBLE_DEVICES=0,1,2,3"):
        resolve_device("cuda:7")
    # a launcher that gave each process its own CUDA_VISIBLE_DEVICES: the one GPU it sees
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 0)


def test_auto_claims_a_gpu_no_other_process_holds(fake_gpus: dict, tmp_path: Path) -> None:
    from nerveseg_cli.io.locks import try_lock

    others = [try_lock(device.gpu_locks_folder() / f"gpu-fake-{i}.lock") for i in (0, 1)]
    assert all(others)  # as other processes would hold them (flock: per open file)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert fake_gpus["set_device"] == [2]  # the current device from then on
    assert resolve_device("auto") == torch.device("cuda", 2)  # the same claim, every call
    for lock in others:
        lock.release()


def test_auto_shares_the_current_gpu_when_every_gpu_is_held(
        fake_gpus: dict, tmp_path: Path) -> None:
    from nerveseg_cli.errors import NervesegWarning
    from nerveseg_cli.io.locks import try_lock

    others = [try_lock(device.gpu_locks_folder() / f"gpu-fake-{i}.lock") for i in range(4)]
    with pytest.warns(NervesegWarning, match="all 4 visible GPUs are held"):
        assert resolve_device("auto") == torch.device("cuda", 2)
    for lock in others:
        lock.release()


CLAIMER = """
import sys, types, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
torch.cuda.current_device = lambda: 0
torch.cuda.set_device = lambda d: None
torch.cuda.get_device_properties = lambda i: types.SimpleNamespace(uuid=f"fake-{i}")
from nerveseg_cli.device import resolve_device
print(resolve_device("auto").index, flush=True)
sys.stdin.read()  # hold the claim until the test closes stdin
"""


def test_two_processes_never_get_the_same_gpu(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, device.GPU_LOCKS_ENV: str(tmp_path / "locks"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    try:
        chosen = sorted(int(p.stdout.readline()) for p in claimers)  # type: ignore[union-attr]
    finally:
        for claimer in claimers:
            claimer.communicate("")
    assert chosen == [0, 1]


def test_a_process_joins_nccl_on_its_own_gpu(fake_gpus: dict) -> None:
    dist = Distributed(rank=1, world=2, local_rank=1, enabled=True)
    dist.init(resolve_device("auto", dist.local_rank))
    (backend, kwargs, set_before), = fake_gpus["init"]
    assert backend == "nccl" and set_before == [torch.device("cuda", 1)]
    if "device_id" in kwargs:  # torch >= 2.3
        assert kwargs["device_id"] == torch.device("cuda", 1)


def test_an_explicit_gpu_for_every_process_is_refused(fake_gpus: dict) -> None:
    dist = Distributed(rank=0, world=2, local_rank=0, enabled=True)
    with pytest.raises(NervesegError, match="each process takes its own GPU"):
        dist.init(torch.device("cuda", 3))
    assert not fake_gpus["init"]


def test_torchrun_means_ddp_even_with_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not Distributed.from_env().enabled
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not Distributed.from_env().enabled  # a variable left over is not a launcher
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert Distributed.from_env() == Distributed(0, 1, 0, enabled=True)


# --------------------------------------------------------------------------------------------
# the dry step


def blank(channels: int = 1, size: int = 64) -> torch.Tensor:
    return torch.zeros(2, channels, size, size)


def test_dry_step_finds_the_parameters_without_a_gradient() -> None:
    from contextlib import nullcontext

    pspnet = build_model(ModelConfig("pspnet", "resnet18", "none", 1))
    before = {k: v.clone() for k, v in pspnet.state_dict().items()}
    unused = dry_step(pspnet, blank(), nullcontext, "pspnet")
    assert unused and all(name.startswith(("net.encoder.layer3", "net.encoder.layer4"))
                          for name in unused)  # encoder depth 3: its deeper stages idle
    after = pspnet.state_dict()  # batch-norm statistics restored, gradients cleared
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in pspnet.parameters())
    unet = build_model(ModelConfig("unet-plain", "none", "none", 1, extra={"width": 2}))
    assert dry_step(unet, blank(), nullcontext, "unet-plain") == []


class NoDeterministicBackward(torch.autograd.Function):
    """What CUDA's bilinear upsampling does under torch.use_deterministic_algorithms(True)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("upsample_bilinear2d_backward_out_cuda does not have a deterministic "
                           "implementation, but you set 'torch.use_deterministic_algorithms("
                           "True)'. You can turn off determinism just for this operation...")


class Upsampling(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return NoDeterministicBackward.apply(self.conv(x)), None


def test_deterministic_without_a_kernel_is_one_line_naming_arch_and_operation() -> None:
    from contextlib import nullcontext

    with pytest.raises(NervesegError) as caught:
        dry_step(Upsampling(), blank(), nullcontext, "fpn")
    message = str(caught.value)
    assert "\n" not in message
    assert "--arch fpn uses upsample_bilinear2d_backward_out_cuda" in message
    assert "without --deterministic" in message


# --------------------------------------------------------------------------------------------
# the loop on the CPU


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_with_folds(tmp_path_factory.mktemp("cuda_paths"), subjects=3, per_subject=6,
                            test=1, size=(64, 48), seed=4, fold_of=lambda subject: subject % 2)


def tiny(manifest: Path, **more: Any) -> TrainOptions:
    return TrainOptions(**{"manifest": str(manifest), "fold": "0", "arch": "unet-plain",
                           "width": 2, "epochs": 2, "batch_size": 3, "device": "cpu",
                           "workers": 1, "rotate": "10:0.5", "noise": "0.05:0.5",
                           "brightness": "0.1:0.5", **more})


SYNCING = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


def test_a_training_step_never_reads_a_tensor_back(manifest: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU each read would wait for the device: the step must queue its work only."""
    reads: list[str] = []
    step = engine.Trainer.train_step

    def watched(self: engine.Trainer, batch: engine.Batch, epoch: int, number: int) -> Any:
        originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

        def reader(name: str) -> Any:
            def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                reads.append(name)
                return originals[name](tensor, *args, **kwargs)
            return read

        for name in SYNCING:
            setattr(torch.Tensor, name, reader(name))
        try:
            return step(self, batch, epoch, number)
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)

    monkeypatch.setattr(engine.Trainer, "train_step", watched)
    train(tiny(manifest, presence_head=True, arch="inception-unet", width=16, epochs=1),
          tmp_path / "run")
    assert reads == []


def test_presence_targets_follow_a_memmap_cache_read_in_row_order(
        manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_data, "MEMMAP_ABOVE_BYTES", 0)  # every cache a memmap
    checked: list[bool] = []
    step = engine.Trainer.train_step

    def checking(self: engine.Trainer, batch: engine.Batch, epoch: int, number: int) -> Any:
        assert isinstance(self.train_set.images, np.memmap)
        masks_any = batch.masks.flatten(1).amax(1) > 0
        checked.append(bool(torch.equal(batch.present.bool(), masks_any)))
        assert list(batch.index) == sorted(batch.index)
        return step(self, batch, epoch, number)

    monkeypatch.setattr(engine.Trainer, "train_step", checking)
    train(tiny(manifest, presence_head=True, batch_size=5), tmp_path / "run")
    assert checked and all(checked)


def loss_reader(amp: torch.dtype | None) -> Any:
    """A trainer cut down to what summing the loss on the device uses."""
    trainer = engine.Trainer.__new__(engine.Trainer)
    trainer.dist, trainer.device, trainer.amp_dtype = Distributed(), torch.device("cpu"), amp
    trainer.state = TrainState()
    trainer.state.progress = SimpleNamespace(loss_sum=0.0, loss_count=0)
    trainer._loss_pending = None
    return trainer


def test_fp16_skips_non_finite_steps_and_other_precisions_stop() -> None:
    fp16 = loss_reader(torch.float16)
    for loss, images in ((0.5, 4), (float("inf"), 4), (0.25, 2)):
        fp16._add_loss(torch.tensor(loss), images)
    fp16._read_loss()
    assert (fp16.state.progress.loss_sum, fp16.state.progress.loss_count) == (2.5, 6)
    for amp in (None, torch.bfloat16):
        other = loss_reader(amp)
        other._add_loss(torch.tensor(0.5), 4)
        other._add_loss(torch.tensor(float("nan")), 4)
        with pytest.raises(NervesegError, match="epoch 1: the loss became non-finite in 1 step"):
            other._read_loss()


# --------------------------------------------------------------------------------------------
# batches and seeds


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 6), st.integers(1, 4))
def test_shared_out_batches_give_every_image_once(n: int, batch: int, world: int) -> None:
    batches = train_data.share_out(
        train_data.epoch_batches(np.zeros(n, bool), batch * world, None,
                                 torch.Generator().manual_seed(n)), world)
    taken = Counter(int(i) for b in batches for rank in range(world) for i in b[rank::world])
    if n >= world:
        assert taken == Counter(range(n))
        assert all(b.size >= world for b in batches)  # no process without an image
    else:
        assert set(taken) == set(range(n)) and sum(taken.values()) == world


def test_derived_seeds_are_fixed_and_apart() -> None:
    keys = [(rank, epoch, step) for rank in range(2) for epoch in range(3) for step in range(5)]
    seeds = [derived_seed(7, 0, *k) for k in keys]
    assert seeds == [derived_seed(7, 0, *k) for k in keys]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert derived_seed(7, 0, 0, 1, 1) != derived_seed(8, 0, 0, 1, 1)
