"""Optimisation: schedules, losses and class weights, gradient accumulation and EMA."""

import pytest
import torch
from torch import nn

from resnetcls.config import OptimConfig, SchedConfig
from resnetcls.engine.loop import EpochStats, Optimization, StepContext, train_one_epoch
from resnetcls.engine.optim import (
    SigmoidOneHotLoss,
    build_ema,
    build_optimizer,
    build_scheduler,
    class_weights,
    make_optimizer,
)


def test_epoch_interval_schedule_changes_only_at_epoch_boundaries():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, SchedConfig(name="cosine", interval="epoch", warmup_epochs=0), 4, 3)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert len(set(lrs[0:4])) == len(set(lrs[4:8])) == len(set(lrs[8:12])) == 1
    assert lrs[0] > lrs[4] > lrs[8]


def test_balanced_class_weights_and_weighted_bce():
    w = class_weights([0, 0, 0, 1], 2, "balanced")
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    logits, target = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([0, 1])
    weighted = SigmoidOneHotLoss(2, weight=torch.tensor([1.0, 3.0]))(logits, target)
    per_sample = nn.functional.binary_cross_entropy_with_logits(
        logits, nn.functional.one_hot(target, 2).float(), reduction="none"
    ).sum(1)
    assert float(weighted) == pytest.approx(float((per_sample[0] + 3 * per_sample[1]) / 4))


def _linear_run(batches, accum):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = Optimization(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cpu", enabled=False),
        build_ema(model, 0.5),
        accum,
    )
    stats = EpochStats()
    train_one_epoch(
        model,
        batches,
        opt,
        nn.CrossEntropyLoss(),
        StepContext(torch.device("cpu"), None, False),
        stats,
        lambda s: False,
    )
    return model, opt, stats


def test_gradient_accumulation_equals_one_large_batch():
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    big = [{"images": x[i : i + 8], "labels": y[i : i + 8], "bad": []} for i in (0, 8)]
    small = [{"images": x[i : i + 4], "labels": y[i : i + 4], "bad": []} for i in range(0, 16, 4)]
    m_big, _, s_big = _linear_run(big, accum=1)
    m_small, opt, s_small = _linear_run(small, accum=2)
    assert s_big.steps == s_small.steps == 2 and s_small.batches == 4
    assert torch.allclose(m_big.weight, m_small.weight, atol=1e-6)
    # The EMA moved toward the trained weights but is not them.
    assert not torch.equal(opt.ema.module.weight, m_small.weight)


@pytest.mark.parametrize("name", ["ce", "bce"])
@pytest.mark.parametrize("weighted", [False, True])
def test_losses_take_soft_targets_with_label_smoothing(name, weighted):
    from resnetcls.config import LossConfig
    from resnetcls.engine.optim import build_loss

    labels = [0, 0, 0, 1, 2, 2] if weighted else []  # weights 2/3, 2, 1: a batch's weight sum is not its size
    loss = build_loss(
        LossConfig(name=name, label_smoothing=0.1, class_weights="balanced" if weighted else "none"),
        3,
        labels,
    )
    torch.manual_seed(0)
    logits, a, b = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])

    def one_hot(labels):
        return nn.functional.one_hot(labels, 3).float()

    # a one-hot soft target is the hard label
    assert float(loss(logits, one_hot(a))) == pytest.approx(float(loss(logits, a)), rel=1e-5)
    # bf16 logits (autocast) with float32 soft targets
    assert float(loss(logits.bfloat16(), one_hot(a))) == pytest.approx(float(loss(logits, a)), rel=2e-2)
    if not weighted:  # a blend lam*a + (1-lam)*b is the same blend of the two losses (both are linear in it)
        lam = 0.3
        mixed = loss(logits, lam * one_hot(a) + (1 - lam) * one_hot(b))
        assert float(mixed) == pytest.approx(
            lam * float(loss(logits, a)) + (1 - lam) * float(loss(logits, b)), rel=1e-5
        )


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_optimizers_are_fused_on_cpu_and_give_the_for_loop_update(name):
    weights = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))  # no BN: a bias before BN has
        # a gradient of rounding noise only, which Adam's normalisation blows up to a full-size step
        optimizer = build_optimizer(model, OptimConfig(name=name, lr=0.01, weight_decay=0.05))
        if not fused:  # torch's per-parameter loop, what the optimizer was before it was fused
            for group in optimizer.param_groups:
                group["fused"] = None
        assert bool(optimizer.param_groups[0]["fused"]) is fused
        for step in range(3):
            optimizer.zero_grad()
            model(torch.randn(5, 4, generator=torch.Generator().manual_seed(step))).square().mean().backward()
            optimizer.step()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    # fp32 throughout: the two implementations differ only in the order of float operations
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)


def test_an_optimizer_torch_cannot_fuse_falls_back_to_its_default_implementation():
    class NoFused(torch.optim.AdamW):
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of supported devices"
                )
            super().__init__(params, **kwargs)

    optimizer = make_optimizer(NoFused, [{"params": [nn.Parameter(torch.zeros(2))]}], True, lr=0.1)
    assert not optimizer.param_groups[0]["fused"]
