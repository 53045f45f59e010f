"""How --tasks/--order/--bins cut a column's values into tasks."""
import pytest

from resnetcls.errors import UserError
from resnetcls.lifelong.tasks import task_groups


def members(groups, values):
    return {name: [v for v in values if member(v)] for name, member in groups}


def test_order_items_are_values_or_inclusive_numeric_ranges():
    values = ["0", "5", "115", "120", "355"]
    got = members(task_groups(values, "angle", "120-355,0-115", 0), values)
    assert list(got) == ["120-355", "0-115"]
    assert got == {"120-355": ["120", "355"], "0-115": ["0", "5", "115"]}
    assert members(task_groups(["1", "2", "3"], "illumination", "3,1", 0), ["1", "2", "3"]) == {"3": ["3"],
                                                                                               "1": ["1"]}


def test_default_order_is_numeric_when_the_column_is():
    assert [n for n, _ in task_groups(["10", "2", "1", "2"], "level", "", 0)] == ["1", "2", "10"]


def test_bins_cut_numbers_into_ranges_and_other_values_into_groups():
    angles = [str(a) for a in range(0, 360, 5)]
    assert [n for n, _ in task_groups(angles, "angle", "", 3)] == ["0-115", "120-235", "240-355"]
    classes = ["a", "b", "c", "d"]
    assert members(task_groups(classes, "label", "", 2), classes) == {"a|b": ["a", "b"], "c|d": ["c", "d"]}
    with pytest.raises(UserError, match="only 4 distinct values"):
        task_groups(classes, "label", "", 5)


def test_a_range_over_a_text_column_names_the_value():
    groups = task_groups(["dark"], "light", "0-5", 0)
    with pytest.raises(UserError, match="'dark' is not a number"):
        groups[0][1]("dark")
