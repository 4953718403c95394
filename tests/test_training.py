"""The shared training pieces: the warm-up / cosine schedule, fused AdamW, and the wall-clock budget callback."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from genrec.cli import main
from genrec.training import TimeBudget, WarmupCosine, adamw_warmup_cosine
from tests.conftest import cli_args, synthetic


def test_warmup_cosine_rises_linearly_then_decays_to_zero_and_survives_a_checkpoint():
    schedule = WarmupCosine(warmup_steps=10, total_steps=110)
    assert [schedule(s) for s in (0, 4, 9)] == [pytest.approx(0.1), pytest.approx(0.5), pytest.approx(1.0)]
    assert schedule(10) == 1.0 and schedule(60) == pytest.approx(0.5) and schedule(110) == 0 and schedule(500) == 0
    assert schedule(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 100)))
    assert WarmupCosine(warmup_steps=100, total_steps=20).warmup == 10  # at most half the schedule
    # LambdaLR saves a callable object's state: a moved end (TimeBudget) is restored from a checkpoint.
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(10, 1000))
    scheduler.lr_lambdas[0].total = 50
    state = scheduler.state_dict()
    fresh = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(10, 1000))
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0].total == 50


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))


def test_fused_adamw_takes_the_same_steps_and_is_chosen_only_on_cuda():
    nets = {fused: _net() for fused in (False, True)}
    optimizers = {fused: adamw_warmup_cosine(net, lr=1e-2, weight_decay=0.1, warmup_steps=2, total_steps=20,
                                              fused=fused)["optimizer"] for fused, net in nets.items()}
    assert optimizers[True].defaults["fused"] and not optimizers[False].defaults["fused"]
    x = torch.randn(16, 6)
    for _ in range(5):
        for fused, net in nets.items():
            net(x).square().mean().backward()
            optimizers[fused].step()
            optimizers[fused].zero_grad()
    for a, b in zip(nets[False].parameters(), nets[True].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.equal(nets[True][0].weight, _net()[0].weight)  # it did move
    # The default: fused only when the parameters are on a CUDA device (CPU runs keep their numbers).
    default = adamw_warmup_cosine(_net(), lr=1e-2, weight_decay=0.1, warmup_steps=2, total_steps=20)["optimizer"]
    assert not default.defaults["fused"]


def _trainer(*, epoch: int, every: int, configured: int, validations: list[float], batches: int = 10):
    """What TimeBudget reads of a trainer, after ``epoch + 1`` epochs, with a LambdaLR over WarmupCosine."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(5, configured * batches))
    return SimpleNamespace(current_epoch=epoch, check_val_every_n_epoch=every, enable_validation=True,
                           fit_loop=SimpleNamespace(max_epochs=configured), num_training_batches=batches,
                           accumulate_grad_batches=1, lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])


@pytest.mark.parametrize(("epoch", "left", "validations", "expected"), [
    (1, 100.0, [], 10),  # 2 done, 10 s/epoch: a validation (~an epoch) at 10 -> 8 epochs + 1 validation fit
    (1, 1000.0, [], 40),  # everything configured fits: unchanged
    (11, 50.0, [3.0], 30),  # 12 done, 2 s/epoch, 3 s/validation: 34 fit, 30 is the last validated in reach
    (11, 15.0, [3.0], 12),  # nothing validated in reach after a validation: stop now (more is never tested)
    (2, 45.0, [], 7),  # nothing validated in reach and no validation yet: train on (the last weights are tested)
])
def test_time_budget_plans_the_epochs_that_fit_and_ends_on_a_validated_one(epoch, left, validations, expected):
    every = 10
    per_epoch = 10.0 if epoch < 5 else 2.0
    budget = TimeBudget(minutes=10)
    trainer = _trainer(epoch=epoch, every=every, configured=40, validations=validations)
    budget.epochs = [{"epoch": e, "train_seconds": per_epoch, "samples": 100} for e in range(epoch + 1)]
    budget.validation_seconds = list(validations)
    budget._configured = 40
    budget._fit_budget(trainer, elapsed=600 - left)
    assert trainer.fit_loop.max_epochs == expected == budget.planned_epochs
    # The learning rate reaches 0 at the new last step.
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule.total == expected * 10 and schedule(expected * 10) == 0 and schedule(expected * 10 - 20) > 0


def test_time_budget_refuses_a_bad_budget():
    with pytest.raises(ValueError, match="minutes must be > 0"):
        TimeBudget(minutes=0)


def test_time_budget_measures_a_real_run_and_leaves_a_roomy_one_alone(tmp_path):
    dataset, tokenizer = synthetic(tmp_path)
    report = tmp_path / "budget.json"
    main(["fit", *cli_args(dataset, tokenizer, tmp_path / "run", "--trainer.max_epochs=3",
                           "--trainer.limit_val_batches=0", "--trainer.callbacks+=genrec.training.TimeBudget",
                           "--trainer.callbacks.minutes=60", f"--trainer.callbacks.report={report}")])
    summary = json.loads(report.read_text())
    # Every epoch sees each of the 108 users x 5 training windows once.
    assert summary["epochs"] == 3 == summary["planned_epochs"] and summary["stopped_by"] == "max_epochs"
    assert [e["samples"] for e in summary["per_epoch"]] == [540] * 3
    assert summary["samples_per_s"] > 0 and summary["validations"] == 0


def test_time_budget_says_what_ended_a_run_before_its_plan():
    from datetime import timedelta
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EarlyStopping, Timer

    budget = TimeBudget(minutes=10)
    budget._configured, budget.planned_epochs = 20, 14
    early, timer = EarlyStopping(monitor="val/ndcg@10"), Timer(duration=timedelta(0))  # a Timer whose time is up

    def after(epochs, *callbacks):  # what _stopped_by reads of a trainer at the end of fit
        return SimpleNamespace(current_epoch=epochs, callbacks=list(callbacks))

    assert budget._stopped_by(after(12, early)) == "other"
    early.stopped_epoch = 11
    assert budget._stopped_by(after(12, early)) == "early_stopping"
    assert budget._stopped_by(after(12, timer)) == "max_time"
    assert budget._stopped_by(after(14, early)) == "budget"
    assert budget._stopped_by(after(20, early)) == "max_epochs"
