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
    assert members(task_groups(["1", "2", "3"], "illumination", "3,1", 0), ["1", "2", "3"]) == {
        "3": ["3"],
        "1": ["1"],
    }


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


def test_openloris_protocol_end_to_end(tmp_path):
    """`data synth --layout openloris` then `lifelong --tasks batches`: the 12 batches in order, the
    challenge's metrics and the 12x12 R matrix in metrics.json, R.csv and the report."""
    import csv
    import json

    from tests.conftest import run_cli

    data, out = tmp_path / "ol", tmp_path / "run"
    assert (
        run_cli(
            "data",
            "synth",
            data,
            "--layout",
            "openloris",
            "--classes",
            "3",
            "--per-class",
            "3",
            "--image-size",
            "32",
        ).returncode
        == 0
    )
    r = run_cli(
        "lifelong",
        data,
        "--tasks",
        "batches",
        "--model",
        "resnet18",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--set",
        "model.width=8",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.deterministic=true",
        "--set",
        "log.tensorboard=false",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    assert "12 tasks" in r.stderr and "task 12/12 batch12" in r.stderr and "over-all" in r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["task_names"] == [f"batch{k}" for k in range(1, 13)]
    assert len(m["R"]) == 12 and all(len(row) == 12 for row in m["R"]) and len(m["b"]) == 12
    assert m["ACC"] == pytest.approx(sum(m["R"][-1]) / 12)
    for key in ("BWT", "FWT", "overall"):
        assert isinstance(m[key], float), key
    assert m["overall"] == pytest.approx(sum(sum(m["R"][i][: i + 1]) / (i + 1) for i in range(12)) / 12)
    with open(out / "R.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 1 + 12  # header, before, one row per batch
    assert run_cli("report", out).returncode == 0
    page = (out / "report.html").read_text()
    assert "id='lifelong-R-matrix'" in page and "overall" in page and page.count("<th>batch12</th>") >= 2
