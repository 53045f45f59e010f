"""--pretrained: torchvision/timm state_dicts load into our ResNets with a new head; nothing unpickles
code."""

import socket
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from resnetcls.cli import main
from resnetcls.errors import UserError
from resnetcls.models import create_model
from resnetcls.models.pretrained import load_pretrained
from tests.conftest import TINY, run_cli
from tests.records.test_modelfile import RunsCode


@pytest.fixture(scope="module")
def tv_state():
    """A state_dict saved from a randomly initialised torchvision ResNet-18 (ImageNet head: 1000 classes)."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}


@pytest.fixture(scope="module")
def tv_files(tv_state, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    save_file(tv_state, root / "tv.safetensors")
    torch.save(tv_state, root / "tv.pth")
    # timm / training-script layout: wrapped in a checkpoint dict, keys prefixed by DistributedDataParallel
    torch.save(
        {"epoch": 90, "state_dict": {f"module.{k}": v for k, v in tv_state.items()}}, root / "timm.pth"
    )
    return root


@pytest.mark.parametrize("name", ["tv.safetensors", "tv.pth", "timm.pth"])
def test_loads_every_tensor_but_the_head_which_is_replaced(tv_state, tv_files, name):
    model = create_model("resnet18", 3)
    logged = []
    report = load_pretrained(model, str(tv_files / name), "resnet18", log=logged.append)
    own = model.state_dict()
    assert len(report["loaded"]) == len(tv_state) - 2 and report["new"] == [] and report["unused"] == []
    assert report["reshaped"] == {"fc.weight": "(1000, 512) -> (3, 512)", "fc.bias": "(1000,) -> (3,)"}
    for key in report["loaded"]:
        assert torch.equal(own[key], tv_state[key]), key
    assert model.fc.out_features == 3
    assert (
        f"loaded {len(tv_state) - 2} tensors" in logged[0]
        and "fc.weight (1000, 512) -> (3, 512)" in logged[0]
    )


def test_a_state_dict_of_another_depth_or_width_is_refused(tv_files, tmp_path):
    save_file(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.safetensors")
    with pytest.raises(
        UserError, match=r"r50.safetensors: does not fit resnet18 .*other shapes: layer1.0.conv1"
    ):
        load_pretrained(create_model("resnet18", 3), str(tmp_path / "r50.safetensors"), "resnet18")
    with pytest.raises(UserError, match=r"tv.safetensors: does not fit resnet18 .*other shapes: bn1.weight"):
        load_pretrained(create_model("resnet18", 3, width=8), str(tv_files / "tv.safetensors"), "resnet18")


def test_a_small_stem_keeps_its_own_first_conv_and_loads_the_rest(tv_state, tv_files):
    model = create_model("resnet18", 4, stem="small")
    report = load_pretrained(model, str(tv_files / "tv.safetensors"), "resnet18", log=lambda s: None)
    assert report["reshaped"]["conv1.weight"] == "(64, 3, 7, 7) -> (64, 3, 3, 3)"
    assert len(report["loaded"]) == len(tv_state) - 3


def test_a_pth_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"conv1.weight": RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="evil.pth: refused: not a plain tensor state_dict"):
        load_pretrained(create_model("resnet18", 3), str(tmp_path / "evil.pth"), "resnet18")
    assert not marker.exists()


def offline(*args, **kwargs):
    raise OSError("Network is unreachable")


def test_torchvision_offline_fails_at_once_saying_how_to_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(UserError) as err:
        load_pretrained(create_model("resnet34", 3), "torchvision", "resnet34")
    message = str(err.value)
    assert "cannot reach download.pytorch.org" in message and "--pretrained FILE" in message
    assert "resnet34-b627a593.pth" in message


def test_torchvision_weights_in_the_hub_cache_load_without_network(tv_state, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(socket, "create_connection", offline)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    cache.parent.mkdir(parents=True)
    torch.save(tv_state, cache)
    report = load_pretrained(create_model("resnet18", 5), "torchvision", "resnet18", log=lambda s: None)
    assert report["source"] == str(cache) and len(report["loaded"]) == len(tv_state) - 2


def test_train_cli_starts_from_a_pretrained_file(tiny_data, tmp_path, capsys):
    # Same names as torchvision's; width 8 keeps the training run tiny.
    save_file(create_model("resnet18", 10, width=8).state_dict(), tmp_path / "w8.safetensors")
    args = [*TINY, "--set", "log.tensorboard=false", "--epochs", "1"]
    result = run_cli(
        "train", tiny_data, *args, "--pretrained", tmp_path / "w8.safetensors", "--out", tmp_path / "r"
    )
    assert result.returncode == 0, result.stderr
    assert "loaded 120 tensors" in result.stderr and "fc.weight (10, 64) -> (3, 64)" in result.stderr
    assert (
        main(
            [
                "train",
                str(tiny_data),
                *args,
                "--pretrained",
                str(tmp_path / "nope.pth"),
                "--out",
                str(tmp_path / "r2"),
            ]
        )
        == 2
    )
    assert "nope.pth: no such file" in capsys.readouterr().err
