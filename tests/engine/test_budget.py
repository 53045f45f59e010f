"""The time budget's arithmetic (measured step and validation times -> epochs) and its measurement, which must
leave the run it measures for untouched."""

import pytest
import torch
from torch import nn

from resnetcls.engine.budget import (
    BudgetChoice,
    epochs_for_budget,
    format_seconds,
    measure_speed,
    pixel_shares,
    schedule_seconds,
)
from resnetcls.engine.loop import Optimization, StepContext


@pytest.mark.parametrize(
    "budget_s, step_s, steps, val_s, expected",
    [
        (600, 0.5, 100, 10, 10),  # 60 s epochs fill 10 minutes exactly
        (100, 0.1, 300, 0, 3),  # 30 s epochs: 3 (90 s) is nearer than 4 (120 s)
        (100, 0.1, 280, 0, 3),  # 28 s: the nearest, 4 (112 s), is more than 10% over: 3 (84 s)
        (100, 1.0, 200, 50, 1),  # one epoch is longer than the budget: still one
        (3600, 0.01, 10, 0.0, 36000),
    ],
)
def test_epochs_fill_the_budget_from_the_measured_speed(budget_s, step_s, steps, val_s, expected):
    assert epochs_for_budget(budget_s, step_s, steps, val_s) == expected


def test_checkpoint_overhead_counts_per_epoch():
    assert epochs_for_budget(600, 0.5, 100, 10) == 10
    assert epochs_for_budget(600, 0.5, 100, 10, overhead_s=15) == 8  # 75 s epochs


def test_a_chosen_schedule_never_ends_more_than_10_percent_past_the_budget():
    for budget_s in (30, 61, 600, 1234.5):
        for epoch_s in (0.7, 3, 9.9, 13, 17, 29):
            n = epochs_for_budget(budget_s, epoch_s / 10, 10, 0)
            assert n * epoch_s <= 1.1 * budget_s or n == 1
            assert (n + 1) * epoch_s > 0.9 * budget_s  # and does not stop far short of it either


def test_progressive_epochs_cost_their_share_of_the_final_size_pixels():
    # 16 epochs at 128 px, progressive 0.5: 64 px (a quarter of the pixels) x3, 80 x3, 96 x3, 112 x3, 128 x4
    shares = pixel_shares(16, 128, 0.5)
    assert shares[0] == 0.25 and shares[-4:] == [1.0] * 4 and shares == sorted(shares)
    share_sum = 3 * (64**2 + 80**2 + 96**2 + 112**2) / 128**2 + 4
    assert schedule_seconds(16, 0.5, 10, 2.0, 1.0, 128, 0.5) == pytest.approx(0.5 * 10 * share_sum + 16 * 3.0)
    assert schedule_seconds(16, 0.5, 10, 2.0, 1.0) == 16 * (0.5 * 10 + 3.0)  # off: every epoch at full size
    assert pixel_shares(5, 128, 0.0) == [1.0] * 5


def test_a_progressive_schedule_fits_more_epochs_into_the_same_budget_and_still_fits():
    budget_s, step_s, steps, val_s = 600, 0.5, 100, 5
    fixed = epochs_for_budget(budget_s, step_s, steps, val_s)
    progressive = epochs_for_budget(budget_s, step_s, steps, val_s, image_size=224, progressive=0.5)
    assert fixed == 11 and progressive > fixed  # cheaper early epochs leave room for more of them
    predicted = schedule_seconds(progressive, step_s, steps, val_s, 0.0, 224, 0.5)
    assert 0.9 * budget_s < predicted <= 1.1 * budget_s
    assert schedule_seconds(progressive + 1, step_s, steps, val_s, 0.0, 224, 0.5) > predicted
    choice = BudgetChoice(
        budget_s,
        step_s,
        val_s,
        steps,
        progressive,
        pixel_share=sum(pixel_shares(progressive, 224, 0.5)) / progressive,
    )
    assert choice.predicted_s == pytest.approx(predicted)
    assert (
        "progressive resizing" in choice.line()
        and "progressive" not in BudgetChoice(600, 0.5, 5, 100, 11).line()
    )


def test_an_epoch_without_time_is_refused():
    with pytest.raises(ValueError, match="must take some time"):
        epochs_for_budget(60, 0.0, 10, 0.0)


def test_durations_print_in_the_units_a_user_types():
    assert [format_seconds(s) for s in (12.3, 90, 1200, 5400)] == ["12.3s", "1m30s", "20m00s", "1h30m"]


def test_the_choice_line_says_what_was_measured_and_chosen_and_warns_when_one_epoch_is_too_long():
    line = BudgetChoice(1200, 0.25, 5.0, 100, 40, 0.5, 3.0).line()
    assert line.startswith("time budget 20m00s: measured 0.25 s/step, 5 s of validation")
    assert "chose 40 epochs x 100 steps" in line and "warning" not in line
    assert "warning: one epoch alone is longer than the budget" in BudgetChoice(10, 1, 5, 100, 1).line()


def test_measurement_leaves_the_model_and_the_random_state_as_they_were(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = [
        {"images": torch.randn(4, 3, 2, 2), "labels": torch.tensor([0, 1, 2, 0]), "bad": []} for _ in range(3)
    ]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    def build(m):
        sgd = torch.optim.SGD(m.parameters(), lr=1.0)
        return Optimization(
            sgd,
            torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 1.0),
            torch.amp.GradScaler("cpu", enabled=False),
        )

    step_s, val_s, save_s = measure_speed(
        model,
        batches,
        batches,
        nn.CrossEntropyLoss(),
        StepContext(torch.device("cpu"), None, False),
        build,
        tmp_path,
    )
    assert step_s > 0 and val_s > 0 and save_s > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(tmp_path.iterdir()) == []  # the timed checkpoint is gone again
