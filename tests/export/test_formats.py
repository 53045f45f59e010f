"""`resnetcls export` (ONNX, TorchScript) with its parity check and the sha256 it records in model.json, and
predict's onnxruntime and openvino backends (which run the exported file, only while it has that sha256) and
when `--backend auto` picks them; a model with an open-set score exports it as a third output, checked
against the eager scorer, with its record (threshold, quantiles) in the metadata."""

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from resnetcls.cli import main
from resnetcls.data.decode import decode_image
from resnetcls.data.transforms import build_eval_transform, make_preprocess
from resnetcls.errors import UserError
from resnetcls.export import formats as export_mod
from resnetcls.inference.predictor import Predictor
from resnetcls.inference.sessions import export_head, onnx_probabilities
from resnetcls.models import create_model
from resnetcls.records.modelfile import (
    load_model_dir,
    save_model_dir,
    sha256_file,
    write_calibration,
    write_open_set,
)
from resnetcls.utils import hardware
from resnetcls.utils.openset import fit_scorer, score_quantiles, threshold_for
from tests.conftest import run_cli, shared_data

CLASSES = ["ants", "bees", "cats"]


def make_tiny_model_dir(path, seed: int = 0):
    """A random (untrained) width-8 ResNet-18 at 32 px: enough to test files, metadata and parity."""
    torch.manual_seed(seed)
    model = create_model("resnet18", len(CLASSES), width=8)
    return save_model_dir(path, model, "resnet18", {"width": 8}, CLASSES, make_preprocess(32))


def open_set_photos() -> tuple[list, list]:
    """Real photographs: 12 ants and bees to fit a score on, and 14 to check with (ants and bees from the
    validation split, and flowers the model never saw)."""
    root = shared_data("hymenoptera")
    fit = [p for c in ("ants", "bees") for p in sorted((root / "train" / c).iterdir())[:6]]
    check = [p for c in ("ants", "bees") for p in sorted((root / "val" / c).iterdir())[:5]]
    return fit, check + sorted((shared_data("flowers12") / "test").rglob("*.jpg"))[:4]


def _features_and_logits(loaded, paths) -> tuple[torch.Tensor, torch.Tensor]:
    transform = build_eval_transform(loaded.preprocess)
    batch = torch.stack([transform(decode_image(p)) for p in paths])
    with torch.no_grad():
        features = loaded.model.forward_head(loaded.model.forward_features(batch), pre_logits=True)
        return features, loaded.model.get_classifier()(features)


def add_open_set(model, score: str, fit: list, check: list, accept: float = 0.5):
    """Give a model directory an open-set score as train does: `score` fitted on the fit images' pooled
    features (in three groups, as classes), its threshold the share `accept` of the check images' scores
    (validation images: about half of them fall below it at 0.5)."""
    loaded = load_model_dir(model)
    features, _ = _features_and_logits(loaded, fit)
    labels = torch.arange(len(fit)) * len(CLASSES) // len(fit)
    scorer = fit_scorer(score, features, labels, len(CLASSES), loaded.temperature)
    quantiles = score_quantiles(scorer(*_features_and_logits(loaded, check)))
    record = {"threshold": threshold_for(quantiles, accept), "accept": accept, "quantiles": quantiles}
    return write_open_set(model, scorer, record)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A few photographs-like files of different sizes and modes (a user's inputs)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    paths = []
    for i, (w, h, mode) in enumerate([(64, 48, "RGB"), (40, 90, "L"), (33, 33, "RGBA"), (120, 80, "RGB")]):
        pixels = rng.integers(0, 255, size=(h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((w, h), Image.BICUBIC).convert(mode)
        paths.append(root / f"img{i}.png")
        img.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory):
    """A model directory exported to ONNX in place by the CLI (the default --out)."""
    model = make_tiny_model_dir(tmp_path_factory.mktemp("m") / "model")
    result = run_cli("export", model, "--to", "onnx")
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    return model, result.stdout


def test_onnx_export_is_checked_carries_metadata_and_has_a_dynamic_batch(exported_dir, images):
    model, stdout = exported_dir
    assert "-> PASS" in stdout and f"wrote {model / 'model.onnx'}" in stdout
    assert "synthetic images" in stdout  # without --check-data: never a folder outside the model and run
    proto = onnx.load(str(model / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == CLASSES
    assert json.loads(meta["preprocess"])["image_size"] == 32
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]  # no open-set score: two
    assert "open_set" not in meta and "open_set_score" not in meta["input"]
    recorded = json.loads((model / "model.json").read_text())["sha256"]
    assert recorded["model.onnx"] == sha256_file(model / "model.onnx")  # what predict and serve will check
    session = export_mod.onnx_session(model / "model.onnx")
    loaded = load_model_dir(model)
    batch = torch.stack([Predictor(model).transform(decode_image(p)) for p in images])
    for n in (1, 3, 4):  # any batch size
        probs = onnx_probabilities(session, batch[:n])
        with torch.no_grad():
            eager = loaded.model(batch[:n]).softmax(1)
        assert probs.shape == (n, 3) and float((probs - eager).abs().max()) <= 1e-4


def test_torchscript_export_to_chosen_file_is_checked_and_carries_metadata(tmp_path, monkeypatch, capsys):
    model = make_tiny_model_dir(tmp_path / "model")
    out = tmp_path / "out" / "classifier.pt"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # a bare model folder (no run around it): synthetic images
    assert main(["export", str(model), "--to", "torchscript", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "16 synthetic images" in stdout and "top-1 agrees on 16/16 -> PASS" in stdout
    meta = export_mod.read_export_metadata(out)
    assert json.loads(meta["classes"]) == CLASSES and json.loads(meta["preprocess"])["resize"] == 37
    scripted = export_mod.load_torchscript(out)
    batch = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits, probs = scripted(batch)
        eager = load_model_dir(model).model(batch).softmax(1)
    assert probs.shape == (5, 3) and float((probs - eager).abs().max()) <= 1e-4
    assert set(json.loads((model / "model.json").read_text())["sha256"]) == {
        "model.safetensors",
        "model.json",
    }


def test_export_checks_on_the_runs_own_val_images_by_default(tmp_path, images):
    run = tmp_path / "run"
    model = make_tiny_model_dir(run / "best")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rows = ["path,label,split"] + [f"{images[0]},ants,train"]
    rows += [f"{p},{CLASSES[i % 3]},val" for i, p in enumerate(images[1:])] + [
        f"{tmp_path / 'broken.jpg'},bees,val"
    ]
    (run / "split.csv").write_text("\n".join(rows) + "\n")
    result = run_cli("export", model, "--to", "onnx")
    assert result.returncode == 0, result.stderr
    # the three readable val rows, not the train row; the unreadable one is named and skipped
    assert f"parity vs eager fp32 on 3 val images of the run ({run / 'split.csv'})" in result.stdout
    assert "top-1 agrees on 3/3 -> PASS" in result.stdout and "synthetic" not in result.stdout
    assert "parity check: skipped" in result.stderr and "broken.jpg" in result.stderr


def test_export_of_a_bare_model_folder_checks_on_synthetic_images_and_says_why(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    result = run_cli("export", model, "--to", "onnx")
    assert result.returncode == 0, result.stderr
    assert "parity vs eager fp32 on 16 synthetic images" in result.stdout
    assert (
        f"note: parity check on synthetic images: no split.csv in {model} or its run folder; "
        "--check-data DATA checks on your photographs"
    ) in result.stderr


def test_predict_and_serve_refuse_a_model_onnx_changed_since_export_naming_it_and_the_fix(
    exported_dir, tmp_path, monkeypatch, images
):
    import shutil

    from resnetcls.serve.app import create_app
    from resnetcls.serve.schema import ServeSettings

    model = shutil.copytree(exported_dir[0], tmp_path / "model")
    data = bytearray((model / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit, the size unchanged
    (model / "model.onnx").write_bytes(bytes(data))
    result = run_cli("predict", model, images[0], "--backend", "onnxruntime")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        f"resnetcls: error: {model / 'model.onnx'}: sha256 does not match model.json (changed or "
        f"replaced since it was exported); re-export it with `resnetcls export {model} "
        "--to onnx`"
    )
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)  # where auto would run model.onnx
    for build in (
        lambda: Predictor(model),
        lambda: create_app(ServeSettings(str(model), backend="openvino")),
    ):
        with pytest.raises(UserError, match="sha256 does not match model.json"):
            build()
    assert run_cli("export", model, "--to", "onnx").returncode == 0  # the fix the message names
    assert Predictor(model).backend == "onnxruntime"


def test_export_that_disagrees_with_eager_is_refused_and_not_written(tmp_path, monkeypatch):
    model = make_tiny_model_dir(tmp_path / "model")
    other = load_model_dir(
        make_tiny_model_dir(tmp_path / "other", seed=1)
    )  # different weights, same metadata
    real = export_mod.torchscript_bytes
    monkeypatch.setattr(export_mod, "torchscript_bytes", lambda loaded: real(other))
    with pytest.raises(export_mod.ExportCheckFailed, match="FAIL"):
        export_mod.export_model(model, "torchscript", tmp_path / "bad.pt", check_data=None)
    assert not (tmp_path / "bad.pt").exists()


def test_export_bad_usage_exits_2_naming_the_problem(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--to", "onnx"]) == 2
    assert "no such model directory" in capsys.readouterr().err
    model = make_tiny_model_dir(tmp_path / "model")
    assert main(["export", str(model), "--to", "onnx", "--check-data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--check-data" in err and "nope" in err


def test_predict_backends_give_the_same_topk(exported_dir, images, capsys):
    model, _ = exported_dir
    outs = {}
    # All in fp32 (ONNX Runtime always is): --precision auto would be bf16 on CPUs with native bf16.
    for backend in ("torch", "onnxruntime", "openvino"):
        assert (
            main(
                [
                    "predict",
                    str(model),
                    *map(str, images),
                    "--topk",
                    "3",
                    "--format",
                    "json",
                    "--backend",
                    backend,
                    "--precision",
                    "fp32",
                ]
            )
            == 0
        )
        captured = capsys.readouterr()
        assert "exporting in memory" not in captured.err  # the exported model.onnx was used
        outs[backend] = json.loads(captured.out)
    for runtime in ("onnxruntime", "openvino"):
        for a, b in zip(outs["torch"], outs[runtime]):
            assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
            assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"])) <= 1e-4
    # The Predictor API at its defaults (channels_last, auto precision) against onnxruntime, with the
    # tolerance of the precision auto picked on this machine: bf16 keeps 8 bits of mantissa (a relative
    # error near 2**-8 per operation), so its probabilities may move by a few 1e-3 on this tiny model.
    auto, onnx_rt = Predictor(model), Predictor(model, backend="onnxruntime")
    batch = torch.stack([auto.transform(decode_image(p)) for p in images])
    tolerance = {"fp32": 1e-4, "bf16": 3e-2}[auto.precision]
    assert float((auto.probabilities(batch) - onnx_rt.probabilities(batch)).abs().max()) <= tolerance
    openvino = Predictor(model, backend="openvino")  # auto precision: bf16 where native, as for torch
    tolerance = {"fp32": 1e-4, "bf16": 3e-2}[openvino.precision]
    assert float((openvino.probabilities(batch) - onnx_rt.probabilities(batch)).abs().max()) <= tolerance


@pytest.mark.parametrize(
    "amx, native_bf16, expected",
    [(True, True, "openvino"), (False, True, "torch"), (False, False, "onnxruntime")],
)
def test_auto_runs_a_current_model_onnx_on_the_runtime_fastest_for_the_cpu(
    exported_dir, tmp_path, monkeypatch, amx, native_bf16, expected
):
    """Measured: OpenVINO (bf16) on AMX, eager bf16 torch on AVX512-BF16 only, ONNX Runtime fp32 on AVX2."""
    model, _ = exported_dir
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: native_bf16)
    assert Predictor(model).backend == expected
    assert Predictor(model, precision="fp32").backend == "torch"  # an explicit precision keeps torch
    fresh = make_tiny_model_dir(
        tmp_path / "fresh"
    )  # no model.onnx: exporting at every start would cost seconds
    assert Predictor(fresh).backend == "torch"


def test_unknown_backend_is_a_clear_error(exported_dir):
    model, _ = exported_dir
    with pytest.raises(Exception, match="--backend 'tensorrt'"):
        Predictor(model, backend="tensorrt")


def test_exports_of_a_calibrated_model_give_its_calibrated_probabilities_and_the_raw_logits(tmp_path, images):
    model = make_tiny_model_dir(tmp_path / "model")
    write_calibration(model, {"calibrated": True, "temperature": 0.2, "fitted_on": "val", "images": 40})
    eager = Predictor(model, precision="fp32")
    batch = torch.stack([eager.transform(decode_image(p)) for p in images])
    expected, raw = eager.probabilities(batch), eager.logits(batch)
    assert float((expected - raw.softmax(1)).abs().max()) > 1e-2  # T = 0.2 visibly sharpens them
    result = run_cli("export", model, "--to", "onnx")
    assert result.returncode == 0 and "-> PASS" in result.stdout, result.stderr
    session = export_mod.onnx_session(model / "model.onnx")
    assert float((onnx_probabilities(session, batch) - expected).abs().max()) <= 1e-4
    assert float(np.abs(session.run(["logits"], {"input": batch.numpy()})[0] - raw.numpy()).max()) <= 1e-3
    assert export_mod.read_export_metadata(model / "model.onnx")["temperature"] == "0.2"
    onnx_backend = Predictor(model, backend="onnxruntime")  # uses the model.onnx just written
    assert float((onnx_backend.probabilities(batch) - expected).abs().max()) <= 1e-4
    out = (
        model / "model.torchscript.pt"
    )  # the default place, inside the model directory: its sha256 is recorded
    assert run_cli("export", model, "--to", "torchscript").returncode == 0
    assert load_model_dir(model).meta["sha256"][out.name] == sha256_file(out)
    with torch.no_grad():
        logits, probs = export_mod.load_torchscript(out)(batch)
    assert float((probs - expected).abs().max()) <= 1e-4 and float((logits - raw).abs().max()) <= 1e-3


@pytest.fixture(scope="module", params=["knn", "mahalanobis"])
def open_set_export(request, tmp_path_factory):
    """A model directory with an open-set score (each feature-space kind), exported to ONNX (checked on real
    photographs) and TorchScript (on synthetic images) in place."""
    fit, check = open_set_photos()
    model = make_tiny_model_dir(tmp_path_factory.mktemp(request.param) / "model")
    add_open_set(model, request.param, fit, check)
    onnx_result = export_mod.export_model(model, "onnx", check_data=check[0].parents[1])
    torchscript_result = export_mod.export_model(model, "torchscript")
    return model, check, onnx_result, torchscript_result


def test_an_open_set_score_is_exported_as_a_third_output_with_its_record_in_the_metadata(open_set_export):
    model, check, onnx_result, torchscript_result = open_set_export
    loaded = load_model_dir(model)
    for result in (onnx_result, torchscript_result):
        assert result.parity.passed and "open-set max |dscore|" in result.parity.summary()
    proto = onnx.load(str(model / "model.onnx"))
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities", "open_set_score"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # still a dynamic batch
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["open_set"]) == loaded.open_set  # threshold, accept and the 101 quantiles
    assert len(json.loads(meta["open_set"])["quantiles"]) == 101 and "open_set_score" in meta["input"]
    eager = Predictor(model, backend="torch", precision="fp32")
    batch = torch.stack([eager.transform(decode_image(p)) for p in check])
    _, expected = eager.scored_probabilities(batch)
    limit = export_mod.score_limit(expected, loaded.open_set["quantiles"])
    session = export_mod.onnx_session(model / "model.onnx")
    for n in (1, 5, len(check)):
        [scores] = session.run(["open_set_score"], {"input": batch[:n].numpy()})
        assert scores.shape == (n,) and float(np.abs(scores - expected[:n].numpy()).max()) <= limit
    scripted = export_mod.load_torchscript(model / "model.torchscript.pt")
    with torch.no_grad():
        logits, probs, scores = scripted(batch)
    assert float((scores - expected).abs().max()) <= limit
    ts_meta = export_mod.read_export_metadata(model / "model.torchscript.pt")
    assert json.loads(ts_meta["open_set"])["threshold"] == loaded.open_set["threshold"]


def test_the_parity_check_fails_an_open_set_score_that_differs_or_is_missing(open_set_export):
    model = open_set_export[0]
    loaded = load_model_dir(model)
    images = export_mod.load_check_images(loaded, None)
    head = export_head(loaded)
    outputs = {
        "exact": lambda batch: head(batch)[1:],
        "shifted": lambda batch: (head(batch)[1], head(batch)[2] + 1),
        "missing": lambda batch: (head(batch)[1], None),
    }
    with torch.no_grad():
        results = {name: export_mod.check_parity(loaded, run, images) for name, run in outputs.items()}
    assert results["exact"].passed and "open-set max |dscore|" in results["exact"].summary()
    for name in ("shifted", "missing"):
        assert not results[name].passed and results[name].summary().endswith("-> FAIL")
