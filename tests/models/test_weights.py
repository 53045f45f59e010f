"""`resnetcls weights`: torchvision's ImageNet files in the torch hub cache, listed, downloaded and installed
with their sha256 prefix checked; offline, one line at once. No test reaches the internet: each points a
depth's entry of IMAGENET_WEIGHTS at a small file of its own and the cache at tmp_path (TORCH_HOME)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from resnetcls.cli.parsers import WEIGHT_DEPTHS
from resnetcls.models import MODELS, weights
from resnetcls.models.weights import BASE_URL, IMAGENET_WEIGHTS, can_download, imagenet_weights_available
from tests.conftest import run_cli


def offline(*args, **kwargs):
    raise OSError("Network is unreachable")


def fake_weights(folder: Path, seed: int = 0) -> tuple[Path, str]:
    """A tiny real state_dict saved as a .pth, and its 8-digit sha256 prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fake-{seed}.pth"
    torch.save({"fc.weight": torch.full((2, 3), float(seed))}, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()[:8]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """TORCH_HOME in tmp_path; returns the checkpoints folder torchvision would read."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def r18(tmp_path, monkeypatch, cache) -> Path:
    """resnet18's entry points at a small file of ours (downloaded by hand to tmp_path/downloads)."""
    path, prefix = fake_weights(tmp_path / "downloads")
    monkeypatch.setitem(IMAGENET_WEIGHTS, "resnet18", (f"{BASE_URL}resnet18-{prefix}.pth", prefix))
    return path


def one_line_error(result) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_from_a_correct_file_installs_it_in_the_cache_and_list_shows_it(r18, cache):
    result = run_cli("weights", "download", "resnet18", "--from", r18)
    assert result.returncode == 0, result.stderr
    cached = cache / Path(IMAGENET_WEIGHTS["resnet18"][0]).name
    assert result.stdout == f"resnet18: installed: {cached}\n"
    assert cached.read_bytes() == r18.read_bytes() and imagenet_weights_available("resnet18") == cached
    assert [p.name for p in cache.iterdir()] == [cached.name]  # no temporary left behind

    for listing in (run_cli("weights", "list"), run_cli("weights")):  # `weights` alone lists
        assert listing.returncode == 0
        rows = {line.split()[0]: line for line in listing.stdout.splitlines()[2:]}
        assert list(rows) == list(IMAGENET_WEIGHTS)
        assert str(cached) in rows["resnet18"] and "MiB" in rows["resnet18"]
        assert "missing" in rows["resnet50"] and imagenet_weights_available("resnet50") is None


def test_from_a_wrong_file_is_refused_naming_both_hash_prefixes(r18, tmp_path, cache):
    wrong, actual = fake_weights(tmp_path / "downloads", seed=1)
    result = run_cli("weights", "download", "resnet18", "--from", wrong)
    message = one_line_error(result)
    expected = IMAGENET_WEIGHTS["resnet18"][1]
    assert f"sha256 starts with {actual}, expected {expected}" in message and str(wrong) in message
    assert not cache.exists() or not any(cache.iterdir())
    assert imagenet_weights_available("resnet18") is None


def test_the_file_of_another_depth_is_named_as_such(r18, tmp_path, monkeypatch):
    other, prefix = fake_weights(tmp_path / "downloads", seed=2)
    monkeypatch.setitem(IMAGENET_WEIGHTS, "resnet34", (f"{BASE_URL}resnet34-{prefix}.pth", prefix))
    message = one_line_error(run_cli("weights", "download", "resnet18", "--from", other))
    assert "(it is resnet34's file)" in message


def test_from_with_all_or_a_missing_file_is_one_line(r18, tmp_path):
    assert "name its depth" in one_line_error(run_cli("weights", "download", "all", "--from", r18))
    missing = tmp_path / "nope.pth"
    assert f"--from {missing}: no such file" in one_line_error(
        run_cli("weights", "download", "resnet18", "--from", missing)
    )


def test_download_offline_fails_at_once_saying_what_to_do(r18, cache, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", offline)
    started = time.monotonic()
    result = run_cli("weights", "download", "resnet18")
    message = one_line_error(result)
    url = IMAGENET_WEIGHTS["resnet18"][0]
    assert time.monotonic() - started < 3
    assert "cannot reach download.pytorch.org" in message and url in message
    assert "resnetcls weights download resnet18 --from FILE" in message
    assert str(cache / Path(url).name) in message
    assert run_cli("weights", "download", "resnet18", "--from", r18).returncode == 0
    every = run_cli("weights", "download", "all")  # what is cached is reported before the first missing one
    assert "cannot reach" in one_line_error(every) and "resnet34" in every.stderr
    assert every.stdout.startswith("resnet18: already in the cache: ")


def test_a_cached_file_is_kept_without_touching_the_network(r18, monkeypatch):
    assert run_cli("weights", "download", "resnet18", "--from", r18).returncode == 0
    monkeypatch.setattr(socket, "create_connection", offline)
    result = run_cli("weights", "download", "resnet18")
    assert result.returncode == 0 and "resnet18: already in the cache: " in result.stdout


def test_can_download_never_waits_past_its_timeout(monkeypatch):
    def hangs(*args, **kwargs):  # a name lookup that answers after 5 s
        time.sleep(5)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    started = time.monotonic()
    assert can_download(0.2) is False
    assert time.monotonic() - started < 1
    monkeypatch.setattr(socket, "create_connection", offline)
    assert can_download() is False
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())
    assert can_download() is True


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server for tmp_path/served; the connect check reports it reachable."""
    served = tmp_path / "served"
    served.mkdir()
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(weights, "reach_error", lambda timeout_s: None)
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=served))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_checks_the_hash_and_lands_in_the_cache(r18, cache, server, monkeypatch):
    served, base = server
    name = Path(IMAGENET_WEIGHTS["resnet18"][0]).name
    (served / name).write_bytes(r18.read_bytes())
    monkeypatch.setitem(IMAGENET_WEIGHTS, "resnet18", (base + name, IMAGENET_WEIGHTS["resnet18"][1]))
    result = run_cli("weights", "download", "resnet18")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"resnet18: downloaded: {cache / name}\n"
    assert (cache / name).read_bytes() == r18.read_bytes()


def test_a_download_with_the_wrong_hash_leaves_nothing_in_the_cache(
    r18, tmp_path, cache, server, monkeypatch
):
    served, base = server
    wrong, actual = fake_weights(tmp_path / "downloads", seed=3)
    name = Path(IMAGENET_WEIGHTS["resnet18"][0]).name
    (served / name).write_bytes(wrong.read_bytes())
    monkeypatch.setitem(IMAGENET_WEIGHTS, "resnet18", (base + name, IMAGENET_WEIGHTS["resnet18"][1]))
    message = one_line_error(run_cli("weights", "download", "resnet18"))
    assert f"sha256 starts with {actual}, expected {IMAGENET_WEIGHTS['resnet18'][1]}" in message
    assert list(cache.iterdir()) == []
    monkeypatch.setitem(IMAGENET_WEIGHTS, "resnet34", (base + "resnet34-00000000.pth", "00000000"))
    missing = one_line_error(run_cli("weights", "download", "resnet34"))  # a 404 from the server
    assert "download of" in missing and "failed" in missing


def test_the_table_matches_torchvision_and_the_cli_choices():
    from torchvision.models import get_model_weights

    assert list(IMAGENET_WEIGHTS) == list(MODELS) and WEIGHT_DEPTHS == (*IMAGENET_WEIGHTS, "all")
    for arch, (url, prefix) in IMAGENET_WEIGHTS.items():
        assert url == get_model_weights(arch).IMAGENET1K_V1.url and Path(url).stem.endswith("-" + prefix)


def test_cache_follows_torch_home(cache):
    assert weights.cache_dir() == cache and weights.cached_path("resnet50").parent == cache
    assert imagenet_weights_available("resnet50") is None and imagenet_weights_available("vgg16") is None


def test_the_connect_check_goes_to_the_https_proxy_when_one_is_set(monkeypatch):
    asked = []

    def connect(address, timeout):
        asked.append(address)
        return socket.socket()

    monkeypatch.setattr(socket, "create_connection", connect)
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert can_download() is True
    monkeypatch.delenv("https_proxy")
    assert can_download() is True
    assert asked == [("proxy.example", 3128), ("download.pytorch.org", 443)]
