"""The continual-learning formulas on a hand-computed 3x3 accuracy matrix."""

import pytest

from resnetcls.lifelong.metrics import continual_metrics

R = [[0.9, 0.2, 0.1], [0.6, 0.8, 0.3], [0.5, 0.7, 0.9]]
B = [0.1, 0.1, 0.1]


def test_metrics_match_hand_computation():
    m = continual_metrics(R, B)
    assert m["ACC"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)  # 0.7
    assert m["BWT"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)  # -0.25
    assert m["FWT"] == pytest.approx(((0.2 - 0.1) + (0.3 - 0.1)) / 2)  # 0.15
    assert m["A"] == pytest.approx((0.9 + 0.6 + 0.8 + 0.5 + 0.7 + 0.9) / 6)  # 0.7333
    bwt_dr = ((0.6 - 0.9) + (0.5 - 0.9) + (0.7 - 0.8)) / 3  # -0.2667
    assert m["BWT_dr"] == pytest.approx(bwt_dr)
    assert m["REM"] == pytest.approx(1 - abs(bwt_dr))
    assert m["BWT_plus"] == 0.0
    assert m["FWT_dr"] == pytest.approx((0.2 + 0.1 + 0.3) / 3)  # 0.2
    assert m["forgetting"] == pytest.approx([0.9 - 0.5, 0.8 - 0.7])
    # over-all accuracy: accuracy on the tasks seen so far, averaged over the sessions
    assert m["overall"] == pytest.approx((0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.9) / 3) / 3)  # 0.7667


def test_single_task_has_no_transfer_metrics():
    m = continual_metrics([[0.8]], [0.1])
    assert m["ACC"] == 0.8 and m["A"] == 0.8 and m["BWT"] is None and m["forgetting"] == []


def test_non_square_matrix_is_refused():
    from resnetcls.errors import UserError

    with pytest.raises(UserError):
        continual_metrics([[0.1, 0.2]])
