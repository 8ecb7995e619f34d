"""The learning-rate schedule against torch's own schedulers, and the optimizer factory."""

from __future__ import annotations

import pytest
import torch

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.train.options import TrainOptions
from nerveseg_cli.train.schedule import OPTIMIZERS, lr_factor, make_optimizer, make_scheduler

STEPS_PER_EPOCH = 7
EPOCHS = 5
BASE_LR = 0.1


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def _ours(options: TrainOptions) -> list[float]:
    return _lrs(make_scheduler(options, _optimizer(), STEPS_PER_EPOCH),
                EPOCHS * STEPS_PER_EPOCH)


def _reference(name: str, warmup: int, total: int, options: TrainOptions
               ) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's scheduler for the same schedule, after a LinearLR warm-up of ``warmup`` steps."""
    optimizer = _optimizer()
    after = total - warmup
    main = {
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=after),
        "poly": lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=after,
                                                                 power=options.poly_power),
        "step": lambda o: torch.optim.lr_scheduler.StepLR(o, STEPS_PER_EPOCH,
                                                          options.step_gamma),
        "none": lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0),
    }[name]
    if warmup == 0:
        return main(optimizer)
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0,
                                             total_iters=warmup - 1)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main(optimizer)],
                                                 milestones=[warmup])


@pytest.mark.parametrize("scheduler", ["cosine", "poly", "none"])
@pytest.mark.parametrize("warmup_epochs", [0.0, 1.0, 2.0])
def test_schedules_match_torch(scheduler: str, warmup_epochs: float) -> None:
    options = TrainOptions(scheduler=scheduler, warmup_epochs=warmup_epochs, epochs=EPOCHS,
                           poly_power=0.9)
    warmup = int(round(warmup_epochs * STEPS_PER_EPOCH))
    total = EPOCHS * STEPS_PER_EPOCH
    expected = _lrs(_reference(scheduler, warmup, total, options), total)
    assert _ours(options) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_step_decay_matches_torch_steplr() -> None:
    options = TrainOptions(scheduler="step", step_gamma=0.8, warmup_epochs=0.0, epochs=EPOCHS)
    total = EPOCHS * STEPS_PER_EPOCH
    expected = _lrs(_reference("step", 0, total, options), total)
    assert _ours(options) == pytest.approx(expected, rel=1e-6)


def test_factor_edges() -> None:
    options = TrainOptions(scheduler="cosine", warmup_epochs=1.0, epochs=2)
    assert lr_factor(options, 0, 4) == pytest.approx(0.25)  # the first warm-up step
    assert lr_factor(options, 4, 4) == pytest.approx(1.0)  # the peak, right after warm-up
    assert lr_factor(options, 10**6, 4) == pytest.approx(0.0)  # past the end: stays at 0
    with pytest.raises(NervesegError, match="--scheduler 'linear'"):
        lr_factor(TrainOptions(scheduler="linear"), 0, 1)


@pytest.mark.parametrize("name,kind", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                       ("sgd", torch.optim.SGD),
                                       ("rmsprop", torch.optim.RMSprop)])
def test_optimizer_factory(name: str, kind: type) -> None:
    options = TrainOptions(optimizer=name, lr=0.01, weight_decay=0.001, momentum=0.8)
    optimizer = make_optimizer(options, [torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.001
    if name in ("sgd", "rmsprop"):
        assert group["momentum"] == 0.8
    if name == "sgd":
        assert group["nesterov"] is True
    assert set(OPTIMIZERS) == {"adamw", "adam", "sgd", "rmsprop"}


def test_sgd_without_momentum_is_not_nesterov() -> None:
    optimizer = make_optimizer(TrainOptions(optimizer="sgd", momentum=0.0),
                               [torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.param_groups[0]["nesterov"] is False


def test_unknown_optimizer() -> None:
    with pytest.raises(NervesegError, match="--optimizer 'lion': use adamw, adam, sgd or rmsprop"):
        make_optimizer(TrainOptions(optimizer="lion"), [torch.nn.Parameter(torch.zeros(1))])


@pytest.mark.parametrize("name,kind", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam)])
def test_adam_family_is_fused_and_updates_as_the_reference(name: str, kind: type) -> None:
    """The factory takes the fused kernel where this torch has one for the CPU, and its
    updates are torch's reference implementation's (up to rounding)."""
    torch.manual_seed(0)
    start = torch.randn(64, 32)
    ours = torch.nn.Parameter(start.clone())
    reference = torch.nn.Parameter(start.clone())
    options = TrainOptions(optimizer=name, lr=0.01, weight_decay=0.01)
    optimizer = make_optimizer(options, [ours])
    plain = kind([reference], lr=0.01, weight_decay=0.01, foreach=False)
    fused_on_cpu = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 4)
    assert optimizer.param_groups[0]["fused"] is (True if fused_on_cpu else None)
    for step in range(5):
        grad = torch.randn_like(start, generator=torch.Generator().manual_seed(step))
        ours.grad, reference.grad = grad.clone(), grad.clone()
        optimizer.step()
        plain.step()
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=1e-5, atol=1e-6)


def test_fused_state_loads_into_an_unfused_optimizer_and_back() -> None:
    """state.pt of a run saved with either implementation resumes with the other."""
    param = torch.nn.Parameter(torch.ones(4))
    fused = make_optimizer(TrainOptions(), [param])
    param.grad = torch.ones(4)
    fused.step()
    plain = torch.optim.AdamW([param], lr=2e-3, weight_decay=1e-4)
    plain.load_state_dict(fused.state_dict())
    fused.load_state_dict(plain.state_dict())
    torch.testing.assert_close(plain.state[param]["exp_avg"], fused.state[param]["exp_avg"])
