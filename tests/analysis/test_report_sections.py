"""The Evaluation and Lifelong sections of report.html: the per-class table at any class count, what a
missing or broken file gives, the lifelong matrix, and the shared HTML pieces."""

import json
import re

import pytest
from PIL import Image

from resnetcls.analysis.report_sections import (
    cards_html,
    embedded_png,
    eval_section,
    headline_cards,
    html_value,
    lifelong_section,
    race_section,
)
from resnetcls.cli import main
from resnetcls.errors import UserError


def test_values_are_four_decimals_or_escaped_text_and_cards_name_them(tmp_path):
    assert html_value(None) == "" and html_value(0.5) == "0.5000" and html_value("<a>") == "&lt;a&gt;"
    assert html_value(3) == "3"
    assert cards_html([("top-1", 0.25)]) == (
        '<div class="cards"><div class="card"><b>0.2500</b><span>top-1</span></div></div>'
    )
    Image.new("RGB", (2, 2)).save(tmp_path / "a.png")
    tag = embedded_png(tmp_path / "a.png", "fig-a", 'a "figure"')
    assert tag.startswith('<img id="fig-a" alt="a &quot;figure&quot;" src="data:image/png;base64,iVBOR')


def test_the_headline_cards_name_the_worst_class_with_its_recall(tmp_path):
    m = {"top1": 0.9, "top5": 1.0, "balanced_accuracy": 0.7, "worst_class": "cat", "worst_class_recall": 0.25}
    m.update({key: 0.5 for key in ("macro_precision", "macro_recall", "macro_f1", "ece", "nll")})
    assert "<b>0.2500</b><span>worst-class recall (cat)</span>" in headline_cards(m)
    del m["worst_class"]  # an evaluation written before the worst class was recorded
    assert "worst-class" not in headline_cards(m)


def test_without_an_evaluation_the_section_says_how_to_make_one_and_a_broken_one_is_named(tmp_path):
    assert "No evaluation yet: run <code>resnetcls eval RUN_DIR DATA</code>" in eval_section(tmp_path)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(UserError, match=r"metrics.json: unreadable evaluation"):
        eval_section(tmp_path)


def test_the_lifelong_section_shows_r_with_b_as_its_first_row(tmp_path):
    assert lifelong_section(tmp_path) == ""  # not a lifelong run
    m = {
        "strategy": "replay",
        "task_names": ["t1", "t2"],
        "train_seconds_per_task": [1.5, 2.5],
        "forgetting": [0.125],
        "ACC": 0.75,
        "b": [0.5, 0.5],
        "R": [[0.9, 0.4], [0.8, 0.7]],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    (tmp_path / "R.json").write_text(json.dumps(m["R"]))
    page = lifelong_section(tmp_path)
    assert "<h2>Lifelong: replay over 2 tasks</h2>" in page and "<tr><th>ACC</th><td>0.7500</td></tr>" in page
    matrix = page.split("id='lifelong-R-matrix'")[1]
    assert re.findall(r"<tr><th>(\w+)</th>", matrix) == ["before", "t1", "t2"]
    assert "<td>0.9000</td><td>0.4000</td>" in matrix


def test_a_1000_class_report_stays_small_with_the_full_matrix_in_csv(tmp_path):
    import csv
    import json

    import torch

    from resnetcls.analysis.evaluate import evaluate_samples
    from resnetcls.analysis.report import write_report
    from resnetcls.data.sources import load_eval_samples
    from resnetcls.data.transforms import make_preprocess
    from resnetcls.inference.predictor import Predictor
    from resnetcls.models import create_model
    from resnetcls.records.modelfile import save_model_dir

    torch.manual_seed(0)
    classes = [f"object_{i:04d}" for i in range(1000)]
    run = tmp_path / "run"
    args = {"stem": "small", "width": 8}
    save_model_dir(
        run / "best", create_model("resnet18", 1000, **args), "resnet18", args, classes, make_preprocess(32)
    )
    (run / "metrics.jsonl").write_text("")
    data = tmp_path / "data"
    data.mkdir()
    rows = ["path,label"]
    for i in range(240):  # fewer images than classes: 240 classes with one image each
        Image.new("RGB", (16, 16), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(data / f"{i}.png")
        rows.append(f"{i}.png,{classes[i * 4]}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    samples, _ = load_eval_samples(str(data / "labels.csv"), classes)
    ev = run / "eval"  # `eval` into RUN_DIR/eval, then `report` (which picks it up)
    evaluate_samples(
        Predictor(run), samples, ev, {"data": str(data), "split": "all"}, num_workers=0, wrong_k=3
    )
    page = write_report(run).read_text()
    matrix = list(csv.reader(open(ev / "confusion_matrix.csv")))
    assert len(matrix) == 1001 and matrix[0][1:] == classes and all(len(r) == 1001 for r in matrix)
    assert sum(int(v) for r in matrix[1:] for v in r[1:]) == 240
    assert len(list(csv.DictReader(open(ev / "per_class.csv")))) == 1000
    m = json.loads((ev / "metrics.json").read_text())
    assert m["confusion_matrix"] is None and m["confusion_matrix_csv"] == "confusion_matrix.csv"
    shown = m["confusion_figure"]
    assert shown["capped"] and len(shown["classes"]) == 50 and shown["of"] == 1000
    assert "the 50 most confused of 1000 classes" in shown["caption"]
    for name in m["figures"].values():
        with Image.open(ev / name) as img:
            assert img.width * img.height <= 2500 * 2500, (name, img.size)
    assert len(page) < 2_000_000 and (ev / "metrics.json").stat().st_size < 1_000_000
    caption = re.search(r"<p class='sub' id='confusion-caption'>(.*?)</p>", page).group(1)
    assert "the 50 most confused of 1000 classes" in caption and ", ".join(shown["classes"]) in caption
    note = re.search(r'id="per-class-note">(.*?)</p>', page).group(1)
    assert "1000 classes (240 in the data)" in note and "per_class.csv" in note
    for table in ("per-class-worst", "per-class-best"):
        body = page.split(f'id="{table}"')[1].split("</table>")[0]
        assert len(re.findall(r"<tr><td>object_\d{4}</td>", body)) == 25


def test_above_50_classes_the_per_class_table_shows_those_in_the_data(tmp_path):
    import json

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    per_class = {f"k{i:02d}": {"precision": 0.0, "recall": None, "f1": None, "support": 0} for i in range(60)}
    for i in range(0, 30, 3):  # 10 of the 60 classes in the data, F1 rising with the index
        per_class[f"k{i:02d}"] = {"precision": i / 30, "recall": i / 30, "f1": i / 30, "support": 2}
    m = {
        "images": 20,
        "data": "d",
        "split": "all",
        "model": "m",
        "top1": 0.5,
        "top5": 0.9,
        "balanced_accuracy": 0.5,
        "macro_precision": 0.5,
        "macro_recall": 0.5,
        "macro_f1": 0.5,
        "ece": 0.1,
        "nll": 1.0,
        "per_class": per_class,
    }
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "60 classes (10 in the data): those in the data, lowest F1 first" in page
    table = page.split('id="per-class"')[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(k\d\d)</td>", table) == [f"k{i:02d}" for i in range(0, 30, 3)]


def test_the_race_section_shows_every_candidates_score_at_each_rung_and_the_winner(tmp_path):
    assert race_section(tmp_path) == ""  # no metrics.jsonl: no race
    entries = [
        {"name": name, "epochs": 12, "step_s": 0.25} for name in ("heavy 128px", "light 128px", "light 96px")
    ]
    race = {
        "kind": "race",
        "entries": entries,
        "rungs": [4, 8],
        "scores": [{"heavy 128px": 0.5, "light 128px": 0.625, "light 96px": 0.25}, {"light 128px": 0.75}],
        "winner": "light 128px",
        "budget_s": 60.0,
        "share_s": 12.0,
    }
    lines = [{"kind": "epoch", "epoch": 1}, race]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    section = race_section(tmp_path)
    assert "<h2>Recipe race</h2>" in section and "12 s of the 60 s budget" in section
    assert "<th>top-1 at step 4</th><th>top-1 at step 8</th>" in section
    assert (
        "<tr><th>light 128px (winner)</th><td>62.5%</td><td>75.0%</td><td>12</td><td>0.25</td></tr>"
        in section
    )
    assert "<tr><th>light 96px</th><td>25.0%</td><td>-</td>" in section
