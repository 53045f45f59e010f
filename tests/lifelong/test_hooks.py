"""lifelong/hooks.py: what each strategy adds to the engine's step loop, and that its checkpointed state
continues exactly (a resume inside a task draws the same replay batches and distils from the same teacher)."""

import pytest
import torch

from resnetcls.config import LifelongConfig
from resnetcls.lifelong.hooks import StrategyHooks, grow_head
from resnetcls.models import create_model


def tiny_model(classes=2):
    torch.manual_seed(0)
    return create_model("resnet18", classes, width=8).eval()


def batches(label):
    """Six different uint8 images of one class (the buffer keeps four, so draws tell them apart)."""
    images = torch.arange(6, dtype=torch.uint8)[:, None, None, None].expand(6, 3, 16, 16) * 40
    return lambda: iter([(images, torch.tensor([label] * 6))])


def test_replay_adds_nothing_until_a_task_has_filled_the_buffer_then_resumes_the_same_draws():
    model = tiny_model()
    hooks = StrategyHooks(LifelongConfig(strategy="replay", buffer_size=4), seed=0)
    hooks.start_task(0, model)
    assert hooks.extra_batch(2) is None and hooks.extra_loss(None, None) is None
    hooks.end_task(model, batches(1), None, None)
    hooks.start_task(1, model)
    hooks.extra_batch(2)  # part-way through task 1 ...
    saved = hooks.state_dict()
    expected = [hooks.extra_batch(2) for _ in range(3)]
    again = StrategyHooks(LifelongConfig(strategy="replay", buffer_size=4), seed=0)
    again.load_state_dict(saved, model)  # ... a resume from a checkpoint taken there
    assert len({int(x[0][0, 0, 0, 0]) for x in expected}) > 1  # the draws differ from each other ...
    for want, got in zip(
        expected, (again.extra_batch(2) for _ in range(3))
    ):  # ... and repeat after the resume
        assert torch.equal(want[0], got[0]) and want[1].tolist() == got[1].tolist() == [1, 1]


def test_lwf_teacher_is_saved_with_its_own_head_and_restored_after_the_head_grew():
    model = tiny_model(2)
    hooks = StrategyHooks(LifelongConfig(strategy="lwf"), seed=0)
    hooks.start_task(0, model)
    hooks.end_task(model, None, None, None)  # the teacher: the model after task 0, two classes
    grow_head(model, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # task 1 has trained for a while
    images = torch.randn(2, 3, 32, 32)
    term = hooks.extra_loss(images, model(images))
    again = StrategyHooks(LifelongConfig(strategy="lwf"), seed=0)
    again.load_state_dict(hooks.state_dict(), model)
    assert again.old_model.fc.out_features == 2
    assert float(term.detach()) > 0 and torch.allclose(again.extra_loss(images, model(images)), term)


def test_ewc_penalises_moving_away_from_the_last_task_weights():
    model = tiny_model()
    hooks = StrategyHooks(LifelongConfig(strategy="ewc", ewc_lambda=10.0), seed=0)
    hooks.start_task(0, model)

    def normalised():
        return iter([(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))])

    hooks.end_task(model, None, normalised, torch.nn.CrossEntropyLoss())
    hooks.start_task(1, model)
    assert float(hooks.extra_loss(None, None).detach()) == 0.0  # at the anchor
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert float(hooks.extra_loss(None, None).detach()) > 0.0


def test_derpp_pulls_the_buffer_logits_back_to_the_stored_ones_and_keeps_them_in_the_checkpoint():
    from resnetcls.config import LifelongConfig as LC

    model = tiny_model()
    lc = LC(strategy="derpp", buffer_size=4, derpp_alpha=0.5, derpp_beta=1.0)
    hooks = StrategyHooks(lc, seed=0)
    hooks.start_task(0, model)
    raw = batches(1)
    hooks.end_task(model, raw, lambda: ((x.float() / 255, y) for x, y in raw()), None)
    hooks.start_task(1, model)

    def step(shift):  # fresh batch + drawn batch, the logits moved by shift from what the model gives now
        images, _ = hooks.extra_batch(2)
        with torch.no_grad():
            logits = model(torch.cat([images, images]).float() / 255)
        return float(hooks.extra_loss(None, logits + shift))

    assert step(0.0) == pytest.approx(0.0, abs=1e-6)  # fp32: the model has not moved since it stored them
    assert step(1.0) == pytest.approx(0.25, abs=1e-5)  # alpha * MSE / 2 (beta=1: no extra CE)
    again = StrategyHooks(lc, seed=0)
    again.load_state_dict(hooks.state_dict(), model)
    assert torch.equal(again.buffer.state_dict()["logits"], hooks.buffer.state_dict()["logits"])
    assert again.buffer.state_dict()["logits"].abs().sum() > 0


def test_ncm_recomputes_earlier_classes_prototypes_from_the_buffer_with_the_current_network():
    """Task 1 brings class 0, task 2 class 1: after task 2 class 0's prototype is the mean normalised feature
    of its buffered images under the network as it is after task 2 (not as it was), class 1's that of the
    task's images; without buffered images class 0 keeps its earlier prototype."""
    from resnetcls.lifelong.ncm import class_prototypes, pooled_features

    def finish(x):
        return x.float() / 255

    model = tiny_model(1)
    hooks = StrategyHooks(LifelongConfig(strategy="ncm", buffer_size=4), seed=0)
    hooks.start_task(0, model)
    first = batches(0)
    hooks.end_task(model, first, lambda: ((finish(x), y) for x, y in first()), None, finish)
    assert hooks.prototypes.shape == (1, model.fc.in_features)
    before = hooks.prototypes.clone()
    grow_head(model, 2)
    with torch.no_grad():
        model.layer4[0].conv1.weight.mul_(-1.0)  # the network changes during task 2
    hooks.start_task(1, model)
    second = lambda: iter([(torch.full((3, 3, 16, 16), 200, dtype=torch.uint8), torch.tensor([1] * 3))])  # noqa: E731
    hooks.end_task(model, second, lambda: ((finish(x), y) for x, y in second()), None, finish)
    stored = torch.stack(hooks.buffer.images[0])
    expected, _ = class_prototypes(*pooled_features(model, [(finish(stored), torch.zeros(len(stored)))]), 1)
    assert torch.allclose(hooks.prototypes[0], expected[0], atol=1e-6)
    assert not torch.allclose(hooks.prototypes[0], before[0], atol=1e-3)
    fresh = [(finish(x), y) for x, y in second()]
    assert torch.allclose(hooks.prototypes[1], class_prototypes(*pooled_features(model, fresh), 2)[0][1])
    restored = StrategyHooks(LifelongConfig(strategy="ncm", buffer_size=4), seed=0)
    restored.load_state_dict(hooks.state_dict(), model)
    assert torch.equal(restored.prototypes, hooks.prototypes)
    empty = StrategyHooks(LifelongConfig(strategy="ncm", buffer_size=0), seed=0)
    empty.prototypes = hooks.prototypes.clone()
    with torch.no_grad():
        model.layer4[0].conv1.weight.mul_(0.5)
    empty.end_task(model, second, lambda: ((finish(x), y) for x, y in second()), None, finish)
    assert torch.equal(empty.prototypes[0], hooks.prototypes[0])  # no buffered images: kept as it was
    assert not torch.allclose(empty.prototypes[1], hooks.prototypes[1])  # recomputed by the changed network
