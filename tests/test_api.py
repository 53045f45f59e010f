"""The Python API: train/evaluate/Predictor give what the CLI gives; the same errors as exceptions with the
CLI's messages; `import resnetcls` stays light. (The guides' Python examples run in tests/test_docs.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnetcls
from resnetcls.data.decode import DecodeError
from resnetcls.errors import UserError
from resnetcls.utils.openset import threshold_for
from tests.conftest import run_cli
from tests.inference.test_command import KNOWN, OTHER, open_set_model

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
TINY_SET = {"model.width": 8, "data.num_workers": 0, "optim.lr": 0.01, "train.auto_recipe": False}


def test_train_returns_the_run_and_matches_the_run_directory(tiny_data, tmp_path):
    run = resnetcls.train(
        tiny_data,
        model="resnet18",
        epochs=2,
        image_size=32,
        batch_size=16,
        out=tmp_path / "run",
        set=TINY_SET,
        report=False,
    )
    assert run.run_dir == tmp_path / "run" and run.best_model == tmp_path / "run" / "best"
    assert (run.best_model / "model.safetensors").is_file() and run.final_model.is_dir()
    assert [e["epoch"] for e in run.epochs] == [1, 2]
    assert run.summary["best_val_top1"] == max(e["val/top1"] for e in run.epochs)
    assert run.config["model"]["width"] == 8 and run.config["data"]["image_size"] == 32
    written = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert run.metrics == written
    assert resnetcls.load_run(run.run_dir).summary == run.summary
    best = run.summary["best_val_top1"]
    assert repr(run) == f"Run({str(run.run_dir)!r}, epochs=2, best_val_top1={best:.4g}, " + (
        f"best_model={str(run.best_model)!r})"
    )


def test_train_without_out_makes_a_new_folder_each_call_and_latest_loads_it(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "train").mkdir(parents=True)  # an earlier call's folder
    run = resnetcls.train(
        tiny_data, model="resnet18", epochs=1, image_size=32, batch_size=16, set=TINY_SET, report=False
    )
    assert run.run_dir == Path("runs", "train-2") and (tmp_path / "runs" / "train-2" / "train.log").is_file()
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "runs" / "train-2").resolve()
    assert resnetcls.load("runs/latest").classes == ["blue", "green", "red"]


def test_a_runs_repr_is_one_short_line_whatever_its_config_and_metrics_hold():
    config = {"data": {"classes": [f"class-{n}" for n in range(500)]}, "optim": {"lr": 0.1}}
    metrics = [{"kind": "epoch", "epoch": n, "val/top1": 0.5} for n in range(1, 11)]
    metrics.append({"kind": "summary", "best_val_top1": 0.93, "best_epoch": 7})
    run = resnetcls.Run(
        Path("runs/x"), Path("runs/x/best"), Path("runs/x/final"), config, metrics, metrics[-1]
    )
    assert repr(run) == "Run('runs/x', epochs=10, best_val_top1=0.93, best_model='runs/x/best')"
    interrupted = resnetcls.Run(Path("runs/y"), Path("runs/y/best"), Path("runs/y/final"), config)
    assert repr(interrupted) == "Run('runs/y', epochs=0, best_model='runs/y/best')"


def test_errors_are_the_clis_messages_as_exceptions(tiny_data, tmp_path):
    cli = run_cli("train", tiny_data, "--set", "optim.lrr=0.1", "--out", tmp_path / "cli")
    assert cli.returncode == 2
    with pytest.raises(UserError) as caught:
        resnetcls.train(tiny_data, set={"optim.lrr": 0.1}, out=tmp_path / "api")
    assert cli.stderr.strip() == f"resnetcls: error: {caught.value}"
    with pytest.raises(UserError, match="not a run directory"):
        resnetcls.train(resume=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="expected a dict"):
        resnetcls.train(tiny_data, set="optim.lr=0.1")


def test_evaluate_gives_the_metrics_eval_writes(tiny_run, tiny_data, tmp_path):
    metrics = resnetcls.evaluate(tiny_run, tiny_data, out=tmp_path / "eval", precision="fp32")
    assert 0 <= metrics["top1"] <= 1 and metrics["images"] > 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["top1"] == metrics["top1"]
    with pytest.raises(UserError, match="batch-size"):
        resnetcls.evaluate(tiny_run, tiny_data, batch_size=0)


def test_predictor_takes_paths_pil_images_and_numpy_arrays_alike(tiny_run, tiny_data):
    predictor = resnetcls.Predictor(tiny_run, precision="fp32")
    path = tiny_data / "red" / "3.jpg"
    with Image.open(path) as opened:
        pil = opened.copy()
    array = np.asarray(pil)
    by_path, by_pil, by_array, by_rgba = predictor.predict(
        [path, pil, array, np.dstack([array, np.full(array.shape[:2], 255, np.uint8)])], topk=3
    )
    assert by_path.path == str(path) and by_pil.path == "<image 1>" and by_array.path == "<array 2>"
    assert [c for c, _ in by_path.top] == [c for c, _ in by_pil.top] == [c for c, _ in by_array.top]
    probs = [p for _, p in by_path.top]  # the same pixels in fp32: the same probabilities
    assert [p for _, p in by_array.top] == pytest.approx(probs, abs=1e-6)
    assert [p for _, p in by_rgba.top] == pytest.approx(probs, abs=1e-6)  # opaque alpha changes nothing
    single = predictor.predict(pil, topk=1)  # one image, not in a list
    assert len(single) == 1 and single[0].top[0][0] == by_path.top[0][0]


def test_a_float_array_is_an_image_and_a_wrong_input_is_refused_naming_it(tiny_run):
    predictor = resnetcls.Predictor(tiny_run, precision="fp32")
    good, black = predictor.predict([np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.float32)])
    assert good.top and not good.error and black.top == good.top  # floats in [0, 1]: the same black image
    with pytest.raises(UserError, match=r"images\[2\]: got a value of type int; accepted: a path"):
        predictor.predict([np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.float32), 7])
    with pytest.raises(DecodeError, match=r"<array 0>: numpy array of shape 2x2x2"):
        from resnetcls.data.decode import decode_in_memory

        decode_in_memory(np.zeros((2, 2, 2), np.uint8), "<array 0>")


def test_import_resnetcls_loads_no_torch_until_the_api_is_used():
    code = (
        "import sys, resnetcls; light = 'torch' not in sys.modules; f = resnetcls.train; "
        "print(light, 'torch' in sys.modules, callable(f), "
        "sorted(set(resnetcls.__all__) - set(dir(resnetcls))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(Path(resnetcls.__file__).parents[1]), "PATH": ""},
    ).stdout
    assert out.split() == ["True", "True", "True", "[]"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        resnetcls.nothing  # noqa: B018


class Captured(Exception):
    """Raised by the stand-in engine with the config train() built."""


def capture_config(monkeypatch) -> list:
    configs = []

    def engine(cfg, *args, **kwargs):
        configs.append((cfg, kwargs))
        raise Captured

    monkeypatch.setattr("resnetcls.api.train_engine", engine)
    return configs


FLAG_VALUES = {
    "val": "valdata",
    "model": "resnet34",
    "epochs": 3,
    "time": "90s",
    "batch_size": 8,
    "image_size": 40,
    "lr": 0.05,
    "device": "cpu",
    "seed": 5,
    "pretrained": "weights.safetensors",
    "precision": "fp32",
    "auto_recipe": False,
    "unknown": "things",
    "teacher": "big-run",
}


def test_the_api_and_train_take_the_same_flags_from_the_table(monkeypatch, tmp_path):
    from resnetcls.cli import main
    from resnetcls.config.flags import flags_of

    assert set(FLAG_VALUES) == {flag.name for flag in flags_of("train")}
    help_text = run_cli("train", "--help").stdout
    configs = capture_config(monkeypatch)
    with pytest.raises(Captured):
        resnetcls.train("photos", out=tmp_path / "api", **FLAG_VALUES)
    argv = ["train", "photos", "--out", str(tmp_path / "cli")]
    for flag in flags_of("train"):
        assert f"{flag.option} " in help_text or f"{flag.option}, " in help_text
        value = FLAG_VALUES[flag.name]
        if flag.kind == "switch":  # --name / --no-name
            argv.append(flag.option if value else flag.option.replace("--", "--no-", 1))
        else:
            argv += [flag.option, str(value)]
    with pytest.raises(Captured):
        main(argv)
    (api, _), (cli, _) = configs
    assert api == cli
    for flag in flags_of("train"):
        section, key = flag.key.split(".")
        assert getattr(getattr(api, section), key) == FLAG_VALUES[flag.name], flag.key
    assert api.data.train == "photos" and api.train.precision == "fp32"


def test_auto_flags_and_the_explicit_keys_reach_the_engine(monkeypatch, tmp_path):
    configs = capture_config(monkeypatch)
    with pytest.raises(Captured):
        resnetcls.train("photos", batch_size="auto", lr="auto", precision="bf16", out=tmp_path)
    cfg, kwargs = configs[0]
    assert kwargs["lr_auto"] and kwargs["batch_auto"] and cfg.train.batch_size == 32
    assert kwargs["explicit"].keys == {"data.train", "train.precision"}


def test_an_unknown_keyword_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError) as caught:
        resnetcls.train("photos", epoch=3, out=tmp_path)
    message = str(caught.value)
    assert message.startswith("train: unknown keyword 'epoch'; the known ones are data, out, resume, force")
    assert "epochs" in message and "precision" in message
    with pytest.raises(UserError, match="unknown keyword 'strategy'"):
        resnetcls.train("photos", strategy="ewc")  # lifelong's flag
    assert "precision: training precision" in resnetcls.train.__doc__


def test_train_reads_resnetcls_set_as_the_command_line_does(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETCLS_SET", "train.epochs=1 train.epoch=1")
    with pytest.raises(UserError) as caught:
        resnetcls.train(tmp_path / "photos", out=tmp_path / "run", epochs=3)
    assert (
        str(caught.value) == "RESNETCLS_SET: unknown config key 'train.epoch'; did you mean 'train.epochs'?"
    )


@pytest.fixture(scope="module")
def open_set(tiny_run, tiny_data, tmp_path_factory):
    return open_set_model(tiny_run, tiny_data, tmp_path_factory.mktemp("api-open-set") / "model")


def test_load_answers_unknown_as_predict_does_and_says_so_in_its_repr(open_set, tiny_data):
    images = [tiny_data / KNOWN[0], tiny_data / OTHER[0]]
    predictor = resnetcls.load(open_set)
    threshold = predictor.threshold
    assert repr(predictor).endswith(f", open_set='knn below {threshold:.4g}')")
    answers = predictor.predict(images)
    assert [(p.label, p.unknown) for p in answers] == [("red", False), ("unknown", True)]
    assert repr(answers[1]).startswith(f"Prediction('{images[1]}': unknown (score ")
    cli = run_cli("predict", open_set, *images, "--format", "json")
    assert [p.to_dict() for p in answers] == json.loads(cli.stdout)  # the API mirrors the CLI
    off = resnetcls.load(open_set, open_set="off")
    assert repr(off).endswith("open_set='off')") and [p.label for p in off.predict(images)] == [
        "red",
        "green",
    ]
    moved = resnetcls.load(open_set, unknown_accept=0.5)
    assert moved.open_set_info() == {
        "on": True,
        "score": "knn",
        "threshold": threshold_for(moved.loaded.open_set["quantiles"], 0.5),
        "accept": 0.5,
    }
    with pytest.raises(UserError, match="--unknown-accept 0: expected a share in"):
        resnetcls.load(open_set, unknown_accept=0)
