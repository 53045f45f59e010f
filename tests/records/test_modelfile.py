"""The model directory: every field of model.json and the weights are checked; nothing is unpickled."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnetcls.cli import main
from resnetcls.data.transforms import build_eval_transform, make_preprocess
from resnetcls.errors import UserError
from resnetcls.models import create_model
from resnetcls.records.modelfile import (
    FORMAT,
    cached_sha256,
    load_model_dir,
    record_export,
    save_model_dir,
    sha256_file,
    write_calibration,
    write_meta_record,
    write_open_set,
)
from resnetcls.utils.openset import fit_scorer, score_quantiles, threshold_for

ARGS = {"stem": "small", "stride_on_1x1": False, "zero_init_residual": True, "width": 8}
CLASSES = ["ant", "bee", "cup"]
PRE = make_preprocess(32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet18", len(CLASSES), **ARGS)
    return save_model_dir(
        tmp_path_factory.mktemp("m") / "model",
        model,
        "resnet18",
        ARGS,
        CLASSES,
        make_preprocess(32),
        {"val_top1": 0.5},
    )


@pytest.fixture
def copy(model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "model.json").read_text())
    meta.update(changes)
    (path / "model.json").write_text(json.dumps(meta))


def rehash(path: Path) -> None:
    """Make model.json name the current weights' hash, as an attacker who edits both files would."""
    meta = json.loads((path / "model.json").read_text())
    meta["sha256"]["model.safetensors"] = sha256_file(path / "model.safetensors")
    (path / "model.json").write_text(json.dumps(meta))


def test_model_json_describes_the_model_completely(model_dir):
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["format"] == FORMAT and meta["arch"] == "resnet18" and meta["arch_args"] == ARGS
    assert meta["classes"] == CLASSES and meta["metrics"] == {"val_top1": 0.5}
    assert set(meta["preprocess"]) >= {"image_size", "resize", "interpolation", "mean", "std"}
    assert meta["sha256"]["model.safetensors"] == sha256_file(model_dir / "model.safetensors")
    loaded = load_model_dir(model_dir)
    assert loaded.classes == CLASSES and loaded.model.fc.out_features == 3


def cli_refuses(copy, capsys, *expected: str) -> None:
    """The CLI exits 2 with a one-line message (no traceback) containing every expected fragment."""
    code = main(["predict", str(copy), str(copy / "model.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err


def test_tampered_weights_are_refused(copy, capsys):
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    cli_refuses(copy, capsys, "model.safetensors", "sha256 does not match")


def test_truncated_weights_are_refused(copy, capsys):
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    cli_refuses(copy, capsys, "sha256 does not match", "truncated")
    rehash(copy)  # even with a matching hash, a truncated file does not parse
    cli_refuses(copy, capsys, "not a valid safetensors file")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "resnetcls.model/2"}, "format 'resnetcls.model/2' is not 'resnetcls.model/1'"),
        ({"format": "something-else"}, "format 'something-else'"),
        ({"classes": CLASSES + ["dog"]}, "4 classes listed but the weights' head has 3"),
        ({"classes": ["ant", "ant", "cup"]}, "class names listed twice: ant"),
        ({"arch": "resnet34"}, "weights do not fit resnet34"),
        ({"arch": "vgg16"}, "unknown arch 'vgg16'"),
        ({"arch_args": {**ARGS, "width": 16}}, "weights do not fit resnet18"),
        ({"arch_args": {**ARGS, "dilation": 2}}, "unknown arch_args dilation"),
        ({"preprocess": {**make_preprocess(32), "interpolation": "lanczos9"}}, "preprocess.interpolation"),
        ({"preprocess": {**make_preprocess(32), "std": [0.2, 0.2]}}, "preprocess.std"),
        ({"preprocess": {**make_preprocess(32, mode="letterbox"), "pad": [0, 300, 0]}}, "preprocess.pad"),
        ({"preprocess": {**make_preprocess(32), "resize_mode": "fit"}}, "preprocess.resize_mode='fit'"),
        ({"sha256": {}}, "sha256.model.safetensors must be a 64-digit hex digest"),
    ],
)
def test_mismatched_metadata_is_refused_naming_what_is_wrong(copy, capsys, changes, message):
    edit_meta(copy, **changes)
    cli_refuses(
        copy, capsys, str(copy / "model.json") if "weights do not fit" not in message else "", message
    )


def test_missing_or_broken_files_are_refused(copy, capsys):
    (copy / "model.json").write_text("{not json")
    cli_refuses(copy, capsys, "model.json", "unreadable model metadata")
    shutil.rmtree(copy)
    copy.mkdir()
    cli_refuses(copy, capsys, "not a model directory")


class RunsCode:
    """Unpickling this object creates `marker`: the classic pickle code-execution payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_planted_pickle_is_refused_without_running(copy, tmp_path, capsys):
    # The payload is live: plain unpickling runs it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(RunsCode(control)))
    assert control.exists()
    marker = tmp_path / "marker"
    for planted in (pickle.dumps(RunsCode(marker)), None):
        if planted is None:  # the same payload in torch.save's zip format
            torch.save({"fc.weight": RunsCode(marker)}, copy / "model.safetensors")
        else:
            (copy / "model.safetensors").write_bytes(planted)
        rehash(copy)
        cli_refuses(copy, capsys, "not a valid safetensors file")
        with pytest.raises(UserError, match="not a valid safetensors file"):
            load_model_dir(copy)
    assert not marker.exists(), "loading the model directory ran code from a pickle"


def test_no_source_file_unpickles():
    """A guard on the code itself: no pickle.load, and every torch.load insists on weights_only=True."""
    src = Path(__file__).resolve().parents[1] / "src" / "resnetcls"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text and "import pickle" not in text, path
        for part in text.split("torch.load(")[1:]:
            call = part.split(")")[0] + part.split(")")[1]
            assert "weights_only=True" in call, f"{path}: torch.load without weights_only=True"


def test_weight_shapes_are_checked_against_arch_args_naming_the_tensor(copy, capsys):
    edit_meta(copy, arch_args={**ARGS, "stem": "imagenet"})
    cli_refuses(
        copy, capsys, "weights do not fit resnet18", "conv1.weight is [8, 3, 3, 3], expected [8, 3, 7, 7]"
    )


def test_model_json_content_is_covered_by_its_hash(copy, capsys):
    meta = json.loads((copy / "model.json").read_text())
    assert len(meta["sha256"]["model.json"]) == 64
    edit_meta(copy, classes=["ant", "bee", "dog"])  # same count and shapes: only the hash can tell
    cli_refuses(copy, capsys, str(copy / "model.json"), "content does not match its sha256.model.json")
    edit_meta(copy, classes=CLASSES, preprocess={**PRE, "std": [0.3, 0.3, 0.3]})
    cli_refuses(copy, capsys, "content does not match")


def test_a_model_dir_written_before_the_content_hash_still_loads(copy):
    meta = json.loads((copy / "model.json").read_text())
    del meta["sha256"]["model.json"]
    (copy / "model.json").write_text(json.dumps(meta))
    assert load_model_dir(copy).classes == CLASSES


def test_a_model_dir_without_a_resize_mode_preprocesses_as_crop(copy):
    """Model folders written before data.resize have no resize_mode: they centre-crop, as trained."""
    meta = json.loads((copy / "model.json").read_text())
    del meta["preprocess"]["resize_mode"], meta["sha256"]["model.json"]
    (copy / "model.json").write_text(json.dumps(meta))
    wide = Image.new("RGB", (90, 30), (200, 0, 0))
    wide.paste((0, 0, 200), (0, 0, 20, 30))  # blue at the left edge: cut off by the centre crop only
    ours = build_eval_transform(load_model_dir(copy).preprocess)(wide)
    assert torch.equal(ours, build_eval_transform(make_preprocess(32))(wide))
    boxed = build_eval_transform(make_preprocess(32, mode="letterbox"))(wide)
    assert (ours[2] < 0).all() and (boxed[2] > 1).any()  # only letterbox still sees the blue edge


def test_saving_refuses_what_loading_would_refuse(tmp_path):
    with pytest.raises(UserError, match="preprocess.std"):
        save_model_dir(
            tmp_path / "m",
            create_model("resnet18", 3, **ARGS),
            "resnet18",
            ARGS,
            CLASSES,
            {**PRE, "std": [0, 0, 0]},
        )
    assert not (tmp_path / "m").exists()


def test_a_model_dir_without_a_calibration_record_loads_with_t_1(model_dir):
    assert "calibration" not in json.loads((model_dir / "model.json").read_text())  # as every older model dir
    assert load_model_dir(model_dir).temperature == 1.0


def test_write_calibration_stores_the_record_and_keeps_the_hashes_valid(copy):
    weights = sha256_file(copy / "model.safetensors")
    write_calibration(copy, {"calibrated": True, "temperature": 1.7, "fitted_on": "val", "images": 40})
    loaded = load_model_dir(copy)  # checks both hashes
    assert loaded.temperature == 1.7 and loaded.meta["calibration"]["images"] == 40
    assert loaded.meta["sha256"]["model.safetensors"] == weights and loaded.classes == CLASSES


def test_an_export_s_hash_is_recorded_beside_the_weights_and_kept_by_later_records(copy):
    (copy / "model.onnx").write_bytes(b"an exported file")
    before = json.loads((copy / "model.json").read_text())["sha256"]
    record_export(copy, "model.onnx")
    hashes = load_model_dir(copy).meta["sha256"]  # still loads: the record is outside the content hash
    assert hashes == {**before, "model.onnx": sha256_file(copy / "model.onnx")}
    write_calibration(copy, {"calibrated": True, "temperature": 1.5, "fitted_on": "val", "images": 40})
    assert load_model_dir(copy).meta["sha256"]["model.onnx"] == hashes["model.onnx"]


def test_the_cached_hash_follows_a_file_rewritten_in_place_with_the_same_size(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"a" * 100)
    first = cached_sha256(path)
    assert first == sha256_file(path)
    with open(path, "r+b") as f:  # same inode, same size
        f.write(b"b")
    assert cached_sha256(path) == sha256_file(path) != first


@pytest.mark.parametrize(
    "record, message",
    [
        ({"temperature": -1.0}, "calibration.temperature=-1.0 must be a positive number"),
        ({"temperature": "2"}, "calibration.temperature='2' must be a positive number"),
        ([1.5], "calibration must be an object"),
    ],
)
def test_a_broken_calibration_record_is_refused_naming_the_field(copy, capsys, record, message):
    edit_meta(copy, calibration=record)
    cli_refuses(copy, capsys, message)
    with pytest.raises(UserError, match="calibration"):
        write_calibration(copy, record if isinstance(record, dict) else {"temperature": 0})


def open_set_record(scorer, features, logits) -> dict:
    quantiles = score_quantiles(scorer(features, logits))
    return {"threshold": threshold_for(quantiles, 0.95), "accept": 0.95, "quantiles": quantiles}


def test_an_open_set_scorer_round_trips_through_the_model_directory(copy):
    assert load_model_dir(copy).scorer is None and load_model_dir(copy).open_set is None  # older dirs: off
    features, labels = torch.randn(12, 64), torch.arange(3).repeat(4)
    scorer = fit_scorer("knn", features, labels, len(CLASSES))
    logits = torch.randn(12, 3)
    write_open_set(copy, scorer, open_set_record(scorer, features, logits))
    loaded = load_model_dir(copy)
    assert loaded.open_set["score"] == "knn" and loaded.open_set["file"] == "open_set.safetensors"
    torch.testing.assert_close(loaded.scorer(features, logits), scorer(features, logits))
    write_calibration(copy, {"calibrated": True, "temperature": 1.5, "fitted_on": "val", "images": 40})
    assert load_model_dir(copy).scorer is not None  # a later record keeps the file's hash


def test_a_changed_open_set_file_or_record_is_refused(copy, capsys):
    features, labels = torch.randn(12, 64), torch.arange(3).repeat(4)
    scorer = fit_scorer("mahalanobis", features, labels, len(CLASSES))
    write_open_set(copy, scorer, open_set_record(scorer, features, torch.randn(12, 3)))
    (copy / "open_set.safetensors").write_bytes(b"x" * 10)
    cli_refuses(copy, capsys, "open_set.safetensors: sha256 does not match model.json")
    edit_meta(copy, open_set={"score": "odin"})
    rehash(copy)
    cli_refuses(copy, capsys, "open_set.score='odin'; expected one of msp, energy, mahalanobis, knn")


def test_a_multi_label_record_round_trips_and_a_broken_one_is_refused(copy, capsys):
    assert load_model_dir(copy).multi_label is None  # single-label unless the record says otherwise
    thresholds = [0.5 + i / 100 for i in range(len(CLASSES))]
    write_meta_record(copy, "multi_label", {"thresholds": thresholds, "separator": ";", "fitted_on": "val"})
    assert load_model_dir(copy).multi_label["thresholds"] == thresholds
    edit_meta(copy, multi_label={"thresholds": [0.5], "separator": ";"})
    cli_refuses(copy, capsys, f"multi_label.thresholds must be {len(CLASSES)} numbers in [0, 1], one a class")
