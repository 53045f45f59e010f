"""`resnetcls demo`: the main job end to end (a smaller data set than `make demo` uses)."""

import json

from resnetcls.demo import run_demo


def test_demo_synthesises_trains_evaluates_predicts_and_says_where(tmp_path, capsys):
    metrics = run_demo(tmp_path / "demo", classes=3, per_class=12, epochs=2)
    out, err = capsys.readouterr()
    run = tmp_path / "demo" / "run"
    assert (tmp_path / "demo" / "data" / "manifest.csv").is_file()
    assert json.loads((run / "best" / "model.json").read_text())["classes"] == sorted(
        p.name for p in (tmp_path / "demo" / "data").iterdir() if p.is_dir()
    )
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["images"] == metrics["images"] == 6
    assert (run / "report.html").is_file()
    assert "test top1" in out and "calibrated (temperature 1)" in out  # 3 val images: too few to fit T
    assert len([line for line in out.splitlines() if ".jpg:" in line]) >= 1
    assert f"report: {run / 'report.html'}" in err and "TensorBoard" in err
