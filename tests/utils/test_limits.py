"""The shared bounds: a model file accepts exactly what training can produce; bools, NaN are not numbers."""

import math

from resnetcls.utils.limits import MEAN_RANGE, STD_RANGE, is_finite_number, is_number, rgb_problem


def test_bool_is_not_a_number_and_nan_is_not_finite():
    assert is_number(3) and is_number(0.5) and not is_number(True) and not is_number("3")
    assert not is_finite_number(math.nan) and not is_finite_number(math.inf) and is_finite_number(-2)


def test_rgb_problem_says_what_is_wrong():
    assert rgb_problem([0.5, 0.4, 0.3], MEAN_RANGE) == ""
    assert rgb_problem([0.5, 0.4], MEAN_RANGE) == "[0.5, 0.4] must be three numbers (R, G, B)"
    assert rgb_problem([0.5, math.nan, 0.3], MEAN_RANGE) == "[0.5, nan, 0.3] must be finite (no NaN or Inf)"
    assert rgb_problem([0.2, 0.0, 0.2], STD_RANGE) == "[0.2, 0.0, 0.2]: each must be between 0.001 and 10"
