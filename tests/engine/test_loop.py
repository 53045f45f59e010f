"""engine/loop.py's one step loop: StepHooks (replayed uint8 images, an extra loss term), the loader's
normalisation contract it relies on, and engine/optim.py's build_optimization."""

import pytest
import torch
from torch import nn

from resnetcls.config import OptimConfig, SchedConfig, TrainConfig
from resnetcls.data.augment import BatchMix
from resnetcls.data.loader import LoaderOptions, build_loader
from resnetcls.data.sampler import ResumableSampler
from resnetcls.data.sources import load_splits
from resnetcls.data.transforms import build_train_transform, make_preprocess
from resnetcls.engine.loop import EpochStats, StepContext, StepHooks, StepRules, train_one_epoch
from resnetcls.engine.optim import build_optimization

CPU = StepContext(torch.device("cpu"), None, False)


class Recorder(nn.Module):
    """A linear classifier over 32x32 RGB that remembers the batches it was given."""

    def __init__(self):
        super().__init__()
        self.fc, self.seen = nn.Linear(3 * 8 * 8, 3), []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))


def loader(tiny_data, uint8_batches):
    splits = load_splits(str(tiny_data))
    return build_loader(
        splits.train,
        build_train_transform(make_preprocess(32)),
        4,
        shuffle=False,
        num_workers=0,
        options=LoaderOptions(uint8_batches=uint8_batches),
    )


def optimization(model, **train):
    return build_optimization(
        model,
        OptimConfig(name="sgd", lr=0.1),
        SchedConfig(name="constant", warmup_epochs=0),
        TrainConfig(epochs=1, **train),
        100,
        CPU,
    )


def test_loader_hands_over_what_it_was_built_for_and_nobody_changes_it(tiny_data):
    floats, uint8 = loader(tiny_data, False), loader(tiny_data, True)
    assert next(iter(floats))["images"].dtype == torch.float32 and floats.device_finish is None
    assert next(iter(uint8))["images"].dtype == torch.uint8 and callable(uint8.device_finish)
    with pytest.raises(AttributeError):
        uint8.device_finish = None
    with pytest.raises(AttributeError):
        floats.uint8_batches = True


class Replay(StepHooks):
    def __init__(self):
        self.asked = []

    def extra_batch(self, n):
        self.asked.append(n)
        return torch.full((2, 3, 32, 32), 255, dtype=torch.uint8), torch.tensor([0, 1])


def test_replayed_uint8_images_join_the_batch_before_it_is_normalised(tiny_data):
    model, hooks = Recorder(), Replay()
    stats = EpochStats()
    train_one_epoch(
        model,
        loader(tiny_data, True),
        optimization(model),
        nn.CrossEntropyLoss(),
        CPU,
        stats,
        lambda s: False,
        StepRules(hooks=hooks),
    )
    assert hooks.asked and all(x.shape[0] == n + 2 for x, n in zip(model.seen, hooks.asked))
    assert stats.images == sum(hooks.asked) + 2 * len(hooks.asked)  # replayed images count as trained
    white = model.seen[0][-1]  # 255 everywhere, normalised with ImageNet's mean/std like the loader's images
    assert white.dtype == torch.float32 and float(white.min()) > 1.5
    with pytest.raises(ValueError, match="uint8_batches=True"):
        train_one_epoch(
            model,
            loader(tiny_data, False),
            optimization(model),
            nn.CrossEntropyLoss(),
            CPU,
            EpochStats(),
            lambda s: False,
            StepRules(hooks=Replay()),
        )


class Penalty(StepHooks):
    def extra_loss(self, images, logits):
        return torch.tensor(5.0)


def test_an_extra_loss_term_is_part_of_the_trained_loss(tiny_data):
    torch.manual_seed(0)
    plain, penalised = EpochStats(), EpochStats()
    for stats, hooks in ((plain, StepHooks()), (penalised, Penalty())):
        torch.manual_seed(0)
        model = Recorder()
        # lr 0: the weights stay put, so the two runs see the same logits and differ only by the term
        opt = build_optimization(
            model,
            OptimConfig(name="sgd", lr=1e-12),
            SchedConfig(name="constant"),
            TrainConfig(epochs=1),
            100,
            CPU,
        )
        torch.manual_seed(1)
        train_one_epoch(
            model,
            loader(tiny_data, False),
            opt,
            nn.CrossEntropyLoss(),
            CPU,
            stats,
            lambda s: False,
            StepRules(hooks=hooks),
        )
    assert penalised.loss == pytest.approx(plain.loss + 5.0, abs=1e-4)


class TargetRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.targets = []

    def forward(self, logits, target):
        self.targets.append(target.clone())
        return nn.functional.cross_entropy(logits.float(), target)


@pytest.mark.parametrize("uint8_batches", [False, True])
def test_a_loaders_batch_mix_is_applied_after_finishing_and_the_loss_gets_soft_targets(
    tiny_data, uint8_batches
):
    splits = load_splits(str(tiny_data))
    transform = build_train_transform(make_preprocess(32))
    sampler = ResumableSampler(splits.train.labels, seed=3)
    mix = BatchMix(0.4, 1.0, len(splits.classes))
    mixed = build_loader(
        splits.train,
        transform,
        4,
        shuffle=False,
        num_workers=0,
        options=LoaderOptions(sampler=sampler, uint8_batches=uint8_batches, mix=mix),
    )
    assert mixed.batch_mix is mix
    plain = build_loader(
        splits.train, transform, 4, shuffle=False, num_workers=0, options=LoaderOptions(sampler=sampler)
    )
    assert plain.batch_mix is None
    model, loss = Recorder(), TargetRecorder()
    stats = EpochStats()
    train_one_epoch(model, mixed, optimization(model), loss, CPU, stats, lambda s: False)
    batches = list(plain)
    assert len(model.seen) == len(batches) and stats.images == len(
        splits.train
    )  # accuracy counts hard labels
    changed = 0
    for seen, target, batch in zip(model.seen, loss.targets, batches):
        assert batch["seed"] is not None
        images, soft = mix(batch["images"], batch["labels"], batch["seed"])  # the batch's own seed
        assert torch.allclose(seen, images, atol=1e-5) and torch.equal(target, soft)
        assert target.shape == (len(batch["labels"]), 3) and torch.allclose(
            target.sum(1), torch.ones(len(target))
        )
        changed += not torch.allclose(seen, batch["images"])
    assert changed >= len(batches) // 2  # solid-colour images: a same-class partner changes nothing


def test_build_optimization_applies_accumulation_ema_and_clipping_from_the_train_config():
    model = nn.Linear(4, 3)
    opt = optimization(model, grad_accum_steps=3, ema_decay=0.9, grad_clip_norm=2.0)
    assert opt.accum_steps == 3 and opt.clip_norm == 2.0 and opt.ema is not None
    assert not opt.scaler.is_enabled()  # fp32 on CPU: no gradient scaling
    plain = optimization(model)
    assert plain.accum_steps == 1 and plain.ema is None
