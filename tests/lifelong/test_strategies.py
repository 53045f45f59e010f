"""Replay buffer, EWC and LwF building blocks."""

import torch

from resnetcls.lifelong.strategies import ReplayBuffer, distillation_loss, ewc_penalty, fisher_diagonal
from resnetcls.models import create_model


def _img(v):
    return torch.full((3, 4, 4), v, dtype=torch.uint8)


def test_replay_buffer_is_class_balanced_and_bounded():
    buf = ReplayBuffer(capacity=12, seed=0)
    for i in range(100):
        buf.add(_img(i % 250), 0)
    assert len(buf) == 12
    for _ in range(50):
        buf.add(_img(1), 1)
        buf.add(_img(2), 2)
    assert len(buf) == 12 and {k: len(v) for k, v in buf.images.items()} == {0: 4, 1: 4, 2: 4}
    images, labels = buf.sample(8)
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 4, 4) and set(labels.tolist()) <= {0, 1, 2}
    assert buf.nbytes() == 12 * 3 * 4 * 4


def test_replay_buffer_reservoir_keeps_early_images_with_fair_probability():
    kept_first_half = 0
    for seed in range(200):
        buf = ReplayBuffer(capacity=10, seed=seed)
        for i in range(100):
            buf.add(_img(i), 0)
        kept_first_half += sum(int(img[0, 0, 0]) < 50 for img in buf.images[0])
    assert 0.4 < kept_first_half / 2000 < 0.6


def test_replay_buffer_state_round_trips():
    buf = ReplayBuffer(capacity=6, seed=1)
    for i in range(20):
        buf.add(_img(i), i % 3)
    other = ReplayBuffer(capacity=6)
    other.load_state_dict(buf.state_dict())
    assert other.seen == buf.seen and len(other) == len(buf)
    assert all(torch.equal(a, b) for k in buf.images for a, b in zip(buf.images[k], other.images[k]))


def test_fisher_in_eval_mode_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = create_model("resnet18", 3, width=8)
    before = model.bn1.running_mean.clone()
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))]
    fisher = fisher_diagonal(model, batches, torch.nn.CrossEntropyLoss())
    assert torch.equal(model.bn1.running_mean, before) and model.training
    assert fisher["fc.weight"].abs().sum() > 0
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert ewc_penalty(model, fisher, anchor) == 0
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert ewc_penalty(model, fisher, anchor) > 0


def test_distillation_is_zero_against_itself_and_positive_otherwise():
    logits = torch.randn(5, 4)
    assert distillation_loss(logits, logits).abs() < 1e-6
    assert distillation_loss(torch.randn(5, 6), logits) > 0  # grown head: only the old 4 classes compared


def test_buffer_keeps_each_images_logits_through_shrinking_sampling_and_a_checkpoint():
    from resnetcls.lifelong.strategies import derpp_terms

    buf = ReplayBuffer(capacity=4, seed=0)
    for i in range(6):
        buf.add(_img(i), 0, torch.tensor([float(i), -1.0]))  # stored when the head had 2 outputs
    for i in range(6):
        buf.add(_img(100 + i), 1, torch.tensor([0.0, float(i), 2.0]))  # and after it grew to 3
    assert buf.nbytes() == 4 * 3 * 4 * 4 + 2 * 2 * 4 + 2 * 3 * 4
    other = ReplayBuffer(capacity=4, seed=0)
    other.load_state_dict(buf.state_dict())
    for b in (buf, other):
        images, labels, logits, mask = b.sample_with_logits(16)
        for img, label, z, m in zip(images, labels.tolist(), logits, mask):
            assert m.tolist() == ([1.0, 1.0, 0.0] if label == 0 else [1.0, 1.0, 1.0])
            assert z[0] == int(img[0, 0, 0]) if label == 0 else z[1] == int(img[0, 0, 0]) - 100
    mse, ce = derpp_terms(logits.clone(), logits, mask, labels)
    assert mse == 0 and ce > 0
    assert derpp_terms(logits + 1.0, logits, mask, labels)[0] == 1.0  # only the stored entries count
