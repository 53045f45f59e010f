"""Decoded uint8 cache + batched uint8 transforms: same pixels as predict, reused, rebuilt, atomic,
shareable."""

import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetcls.data import cache as cache_mod
from resnetcls.data import scan as scan_mod
from resnetcls.data import store as store_mod
from resnetcls.data.cache import cache_key, open_or_build
from resnetcls.data.transforms import build_eval_batch_transform, make_preprocess
from resnetcls.errors import UserError
from tests.conftest import TINY


def test_store_is_reused_and_rebuilt_when_a_file_changes(photos, tmp_path, monkeypatch):
    geometry = build_eval_batch_transform(make_preprocess(32)).geometry
    store = open_or_build(photos.paths, geometry, tmp_path)
    assert store.bad_files == {photos.paths[2]: store.bad[2]} and store.load(0).shape == (37, 58, 3)

    def no_decoding(*args):
        raise AssertionError("decoded again although the store is complete")

    monkeypatch.setattr(store_mod, "decode_resized", no_decoding)
    assert open_or_build(photos.paths, geometry, tmp_path).directory == store.directory
    st = os.stat(photos.paths[0])
    os.utime(photos.paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(photos.paths, geometry) != store.directory.name
    with pytest.raises(AssertionError, match="decoded again"):
        open_or_build(photos.paths, geometry, tmp_path)


KILL_DURING_BUILD = """
import os, signal, sys
from resnetcls.data import cache, store
real, calls = store.decode_resized, []
def dying(path, geometry):
    calls.append(path)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, geometry)
store.decode_resized = dying
cache.open_or_build(sys.argv[2:], cache.StoreGeometry(37), sys.argv[1])
"""


def test_a_killed_first_pass_leaves_no_store_that_looks_complete(photos, tmp_path):
    cache_dir = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_BUILD, str(cache_dir), *photos.paths])
    assert killed.returncode == -9
    key = cache_key(photos.paths, cache_mod.StoreGeometry(37))
    assert not (cache_dir / key).exists() and list(cache_dir.glob(f"{key}.partial-*"))
    store = open_or_build(photos.paths, cache_mod.StoreGeometry(37), cache_dir)
    assert store.load(0).shape == (37, 58, 3)
    assert not list(cache_dir.glob(f"{key}.partial-*"))  # the next builder cleaned up


def _build_in_child(paths, cache_dir, log):
    real = store_mod.decode_resized

    def counting(path, geometry):
        with open(log, "a") as f:
            f.write(path + "\n")
        return real(path, geometry)

    store_mod.decode_resized = counting
    print(open_or_build(paths, cache_mod.StoreGeometry(37), cache_dir).directory)


def test_concurrent_processes_share_one_build(photos, tmp_path):
    """As torchrun ranks on one machine do: one builds, the others wait and read the same store."""
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_build_in_child, args=(photos.paths, tmp_path / "c", tmp_path / "log"))
        for _ in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert len((tmp_path / "log").read_text().splitlines()) == len(photos.paths)  # decoded once in all
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 1


def test_an_unusable_cache_folder_is_a_one_line_user_error(photos, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"file/c: cannot write the decoded-image cache: .*data.cache=false"):
        open_or_build(photos.paths, cache_mod.StoreGeometry(37), tmp_path / "file" / "c")


def test_cache_build_records_the_image_that_killed_its_worker_or_ran_out_of_memory(
    photos, tmp_path, monkeypatch
):
    real = store_mod.decode_resized

    def failing(path, geometry):
        if path == photos.paths[3]:
            os._exit(9)
        if path == photos.paths[4]:
            raise MemoryError
        return real(path, geometry)

    monkeypatch.setattr(store_mod, "decode_resized", failing)
    monkeypatch.setattr(scan_mod, "POOL_MIN_IMAGES", 2)
    store = open_or_build(photos.paths, cache_mod.StoreGeometry(37), tmp_path, workers=2, log=lambda _: None)
    assert (
        store.bad_files[photos.paths[3]] == "decoding this image killed its worker process (out of memory?)"
    )
    assert store.bad_files[photos.paths[4]] == "not enough memory to decode and resize this image"
    assert store.load(0).shape == (37, 58, 3) and len(store.bad_files) == 3  # plus the broken file


def test_an_extreme_aspect_ratio_is_stored_centre_cropped_to_4_to_1(tmp_path):
    strip = np.zeros((8, 4000, 3), np.uint8)
    strip[:, 1996:2004] = 255  # a white centre block, a quarter of the 32 px kept
    Image.fromarray(strip).save(tmp_path / "strip.png")
    store = open_or_build(
        [str(tmp_path / "strip.png")], cache_mod.StoreGeometry(37), tmp_path / "c", log=lambda _: None
    )
    stored = store.load(0)
    assert stored.shape == (37, 148, 3)  # not 37 x 18500: at most 4 short sides long
    assert stored[:, 64:84].min() > 200 and stored[:, :40].max() < 50  # still in the centre


PEAK_RSS_OF_TWO_BUILDS = """
import resource, sys
from resnetcls.data.cache import StoreGeometry, open_or_build
folder = sys.argv[1]
for count in (600, 1200):  # a build that kept its images would raise the peak by the second store's size
    paths = [f"{folder}/{i % 40}.png" for i in range(count)]  # tiny files, each stored as 160 x 160 x 3
    store = open_or_build(paths, StoreGeometry(160, "squash"), f"{folder}/cache-{count}", workers=2,
                          log=lambda _: None)
    assert len(store) == count and not store.bad
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: kilobytes
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kilobytes is Linux's convention")
def test_building_a_store_twice_as_large_does_not_grow_the_builders_memory(tmp_path):
    """The build streams: each decoded image is written and dropped, a few chunks in flight. The 1200-image
    store is 46 MB larger than the 600-image one; a build that kept its decoded images until the end would
    raise the builder's peak RSS by at least that."""
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    child = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_OF_TWO_BUILDS, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    after_600, after_1200 = map(int, child.stdout.split())
    assert after_1200 - after_600 < 600 * 160 * 160 * 3 / 4, (after_600, after_1200)


SLOW_FIRST_DECODE = """
import time
from resnetcls.data import store
real = store.decode_resized
def slow_first(path, geometry, calls=[]):
    calls.append(path)
    if len(calls) == 1:  # this node's cache build takes longer than the job's collective timeout
        time.sleep(8)
    return real(path, geometry)
store.decode_resized = slow_first
"""


def _two_nodes(data, out, caches: list, slow_node1: Path | None = None) -> list[subprocess.CompletedProcess]:
    """`train` under torchrun as two one-process "nodes" on 127.0.0.1, each with its own RESNETCLS_CACHE."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = []
    for rank, cache in enumerate(caches):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RESNETCLS_CACHE": str(cache)}
        if rank == 1 and slow_node1 is not None:  # its sitecustomize slows its first decode
            env["PYTHONPATH"] = os.pathsep.join([str(slow_node1), env.get("PYTHONPATH", "")])
        nodes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes",
                    "2",
                    "--node-rank",
                    str(rank),
                    "--nproc-per-node",
                    "1",
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    str(port),
                    "-m",
                    "resnetcls",
                    "train",
                    data,
                    *TINY,
                    "--epochs",
                    "1",
                    "--out",
                    out,
                    "--set",
                    "train.dist_timeout_s=4",
                    "--set",
                    "data.leak_check=false",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return [
        subprocess.CompletedProcess(node.args, node.wait(240), node.communicate()[0], "") for node in nodes
    ]


def _stores(cache: Path) -> list[Path]:
    return sorted(meta.parent for meta in cache.glob("*/meta.json"))


def test_two_nodes_sharing_a_cache_folder_build_each_store_once(tiny_data, tmp_path):
    """One node builds each store under the lock, the other waits on it and reads the same store."""
    nodes = _two_nodes(tiny_data, tmp_path / "run", [tmp_path / "shared"] * 2)
    assert [node.returncode for node in nodes] == [0, 0], nodes[0].stdout[-3000:] + nodes[1].stdout[-3000:]
    assert (tmp_path / "run" / "final" / "model.json").is_file()
    builds = sum(node.stdout.count("images once into the cache") for node in nodes)
    assert builds == 2 and len(_stores(tmp_path / "shared")) == 2  # train and val, each built once


def test_two_nodes_with_their_own_cache_folders_each_build_theirs_however_long_one_takes(tiny_data, tmp_path):
    """Each node builds its own stores; the node that finishes first waits for the other longer than the
    collective timeout (train.dist_timeout_s=4, one build slowed by 8 s) without the job failing."""
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_FIRST_DECODE)
    nodes = _two_nodes(
        tiny_data, tmp_path / "run", [tmp_path / "node0", tmp_path / "node1"], tmp_path / "slow"
    )
    assert [node.returncode for node in nodes] == [0, 0], nodes[0].stdout[-3000:] + nodes[1].stdout[-3000:]
    assert (tmp_path / "run" / "final" / "model.json").is_file()
    assert [node.stdout.count("images once into the cache") for node in nodes] == [2, 2]
    assert len(_stores(tmp_path / "node0")) == len(_stores(tmp_path / "node1")) == 2
    assert [p.name for p in _stores(tmp_path / "node0")] == [p.name for p in _stores(tmp_path / "node1")]
