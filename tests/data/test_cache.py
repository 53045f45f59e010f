"""Decoded uint8 cache + batched uint8 transforms: same pixels as predict, reused, rebuilt, atomic, shareable."""
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from resnetcls.data import cache as cache_mod
from resnetcls.data import scan as scan_mod
from resnetcls.data.cache import cache_key, open_or_build
from resnetcls.data.decode import decode_image
from resnetcls.data.loader import build_loader
from resnetcls.data.sampler import ResumableSampler
from resnetcls.data.sources import Samples
from resnetcls.errors import UserError
from resnetcls.data.transforms import (build_eval_batch_transform, build_eval_transform, build_train_transform,
                                       make_preprocess)


@pytest.fixture
def photos(tmp_path):
    """Smooth random images of different sizes and aspect ratios, one broken file, one 1x1 image."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(97, 61), (50, 80), (64, 64), (300, 200), (41, 41), (1, 1)]):
        paths.append(str(tmp_path / f"{i}.png"))
        blobs = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        blobs.resize((w, h), Image.Resampling.BICUBIC).save(paths[-1])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    paths.insert(2, str(tmp_path / "broken.jpg"))
    return Samples(paths, [i % 2 for i in range(len(paths))], ["a", "b"])


def _eval_batch(samples, preprocess, store_size, cache_dir):
    loader = build_loader(samples, build_eval_batch_transform(preprocess, store_size), 16, shuffle=False,
                          num_workers=0, cache_dir=cache_dir)
    return next(iter(loader))


@pytest.mark.parametrize("augment,interpolation", [("crop_flip", "bilinear"), ("resize", "bilinear"),
                                                   ("crop_flip", "bicubic"), ("crop_flip", "nearest")])
def test_cached_eval_equals_the_eval_transform_that_predict_uses(photos, tmp_path, augment, interpolation):
    preprocess = make_preprocess(32, augment=augment, interpolation=interpolation)
    batch = _eval_batch(photos, preprocess, 0, tmp_path / "cache")
    expected = torch.stack([build_eval_transform(preprocess)(decode_image(photos.paths[i]))
                            for i in batch["index"].tolist()])
    assert batch["images"].dtype == torch.float32 and batch["images"].shape == (6, 3, 32, 32)
    assert torch.allclose(batch["images"], expected, atol=1e-5)  # float rounding only
    assert [os.path.basename(p) for p, _ in batch["bad"]] == ["broken.jpg"]
    # A larger stored size needs a second resize: equal up to resize rounding.
    bigger = _eval_batch(photos, preprocess, 64, tmp_path / "cache")["images"]
    assert (bigger - expected).abs().mean() < 0.05


def test_train_batches_are_random_crops_flips_and_jitter_of_the_stored_images(photos, tmp_path):
    preprocess = make_preprocess(24)
    transform = build_train_transform(preprocess, color_jitter=0.4)
    loader = build_loader(photos, transform, 4, shuffle=True, num_workers=0, seed=1, cache_dir=tmp_path)
    seen, bad = [], []
    for batch in loader:
        seen += batch["index"].tolist()
        bad += batch["bad"]
        assert batch["images"].shape[1:] == (3, 24, 24) and batch["images"].dtype == torch.float32
        assert batch["labels"].tolist() == [photos.labels[i] for i in batch["index"].tolist()]
    assert sorted(seen) == [0, 1, 3, 4, 5, 6] and len(bad) == 1  # index 2 is the broken file
    lo = (0 - max(preprocess["mean"])) / min(preprocess["std"])
    hi = (1 - min(preprocess["mean"])) / min(preprocess["std"])
    first = next(iter(loader))["images"]
    assert lo - 1e-4 <= first.min() and first.max() <= hi + 1e-4


def test_store_is_reused_and_rebuilt_when_a_file_changes(photos, tmp_path, monkeypatch):
    geometry = build_eval_batch_transform(make_preprocess(32)).geometry
    store = open_or_build(photos.paths, geometry, tmp_path)
    assert store.bad_files == {photos.paths[2]: store.bad[2]} and store.load(0).shape == (37, 58, 3)

    def no_decoding(*args):
        raise AssertionError("decoded again although the store is complete")
    monkeypatch.setattr(cache_mod, "decode_resized", no_decoding)
    assert open_or_build(photos.paths, geometry, tmp_path).directory == store.directory
    st = os.stat(photos.paths[0])
    os.utime(photos.paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(photos.paths, geometry) != store.directory.name
    with pytest.raises(AssertionError, match="decoded again"):
        open_or_build(photos.paths, geometry, tmp_path)


KILL_DURING_BUILD = """
import os, signal, sys
from resnetcls.data import cache
real, calls = cache.decode_resized, []
def dying(path, geometry):
    calls.append(path)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, geometry)
cache.decode_resized = dying
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
    real = cache_mod.decode_resized

    def counting(path, geometry):
        with open(log, "a") as f:
            f.write(path + "\n")
        return real(path, geometry)
    cache_mod.decode_resized = counting
    print(open_or_build(paths, cache_mod.StoreGeometry(37), cache_dir).directory)


def test_concurrent_processes_share_one_build(photos, tmp_path):
    """As torchrun ranks on one machine do: one builds, the others wait and read the same store."""
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_build_in_child, args=(photos.paths, tmp_path / "c", tmp_path / "log"))
                for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert len((tmp_path / "log").read_text().splitlines()) == len(photos.paths)  # decoded once in all
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 1


def test_any_sampler_plugs_in_and_workers_read_the_store(photos, tmp_path):
    transform = build_eval_batch_transform(make_preprocess(16))
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(range(len(photos)), num_replicas=2, rank=rank, shuffle=True, seed=5)
        loader = build_loader(photos, transform, 2, shuffle=True, num_workers=2, sampler=sampler,
                              cache_dir=tmp_path)
        for batch in loader:
            seen += batch["index"].tolist() + [photos.paths.index(p) for p, _ in batch["bad"]]
    assert len(seen) == 8 and set(seen) == set(range(len(photos)))  # DistributedSampler pads 7 to 2 x 4


def test_batches_from_workers_equal_in_process_batches_even_when_kept(photos, tmp_path):
    """Workers hand their pixels over through a ring of shared batch slots; the batches must be exactly the
    in-process ones, in order, through many turns of the ring, an epoch left early, bad files, and with the
    caller keeping every batch (uint8 too) until the end."""
    many = Samples(photos.paths * 4, photos.labels * 4, photos.classes)  # 28 images, 4 broken: 14 batches
    transform = build_train_transform(make_preprocess(16))

    def three_epochs(workers: int, finish: bool) -> list[dict]:
        sampler = ResumableSampler(many.labels, "shuffle", seed=3)
        loader = build_loader(many, transform, 2, shuffle=False, num_workers=workers, sampler=sampler,
                              cache_dir=tmp_path)
        if not finish:
            loader.finish = None  # what training on a GPU and lifelong mode do: they keep uint8 batches
        kept = []
        for k, batch in enumerate(loader):
            kept.append(batch)
            if k == 2:
                break  # epoch 0 left after 3 batches; workers had more in flight
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            kept += list(loader)
        return kept

    for finish in (True, False):
        expected, got = three_epochs(0, finish), three_epochs(2, finish)
        assert len(got) == len(expected) == 3 + 2 * 14
        for want, have in zip(expected, got):
            assert have["index"].tolist() == want["index"].tolist() and have["bad"] == want["bad"]
            if want["images"] is None:
                assert have["images"] is None  # both images of the batch broken
            else:
                assert have["images"].dtype == (torch.float32 if finish else torch.uint8)
                assert torch.equal(have["images"], want["images"])


def test_little_shared_memory_gives_the_same_batches_and_says_so(photos, tmp_path, monkeypatch, capsys):
    """In a container with a small /dev/shm the loader skips its batch ring (and says why) but delivers the
    same batches."""
    transform = build_train_transform(make_preprocess(16))

    def epoch() -> list[dict]:
        sampler = ResumableSampler(photos.labels, "shuffle", seed=4)
        return list(build_loader(photos, transform, 2, shuffle=False, num_workers=2, sampler=sampler,
                                 cache_dir=tmp_path))

    roomy = epoch()
    real_statvfs = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((4096, 4096, 100, 1, 1, 0, 0, 0, 0, 255))
                        if path == "/dev/shm" else real_statvfs(path))
    cramped = epoch()
    assert "note: /dev/shm has 0 MB free" in capsys.readouterr().err
    assert [b["index"].tolist() for b in cramped] == [b["index"].tolist() for b in roomy]
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(roomy, cramped) if a["images"] is not None)


def test_cache_off_decodes_on_the_fly_with_the_same_result(photos, tmp_path):
    preprocess = make_preprocess(32)
    cached = _eval_batch(photos, preprocess, 0, tmp_path)
    fresh = _eval_batch(photos, preprocess, 0, None)
    assert torch.equal(cached["images"], fresh["images"]) and cached["bad"] == fresh["bad"]


def test_an_unusable_cache_folder_is_a_one_line_user_error(photos, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"file/c: cannot write the decoded-image cache: .*data.cache=false"):
        open_or_build(photos.paths, cache_mod.StoreGeometry(37), tmp_path / "file" / "c")


def _die_on_boom(item: str) -> str:
    if item == "boom":
        os._exit(9)  # what the kernel's OOM killer does to a worker
    return item.upper()


def test_a_worker_killed_by_one_item_names_it_and_the_rest_still_complete():
    items = [f"f{i}" for i in range(80)]
    items[37] = "boom"
    out = list(cache_mod.parallel_map(_die_on_boom, items, workers=2, on_crash=lambda item: f"crashed {item}"))
    assert out == [("crashed boom" if i == "boom" else i.upper()) for i in items]
    with pytest.raises(UserError, match="^boom: decoding this image killed its worker process"):
        list(cache_mod.parallel_map(_die_on_boom, items, workers=2))


def test_cache_build_records_the_image_that_killed_its_worker_or_ran_out_of_memory(photos, tmp_path, monkeypatch):
    real = cache_mod.decode_resized

    def failing(path, geometry):
        if path == photos.paths[3]:
            os._exit(9)
        if path == photos.paths[4]:
            raise MemoryError
        return real(path, geometry)
    monkeypatch.setattr(cache_mod, "decode_resized", failing)
    monkeypatch.setattr(scan_mod, "POOL_MIN_IMAGES", 2)
    store = open_or_build(photos.paths, cache_mod.StoreGeometry(37), tmp_path, workers=2, log=lambda _: None)
    assert store.bad_files[photos.paths[3]] == "decoding this image killed its worker process (out of memory?)"
    assert store.bad_files[photos.paths[4]] == "not enough memory to decode and resize this image"
    assert store.load(0).shape == (37, 58, 3) and len(store.bad_files) == 3  # plus the broken file


def test_an_extreme_aspect_ratio_is_stored_centre_cropped_to_4_to_1(tmp_path):
    strip = np.zeros((8, 4000, 3), np.uint8)
    strip[:, 1996:2004] = 255  # a white centre block, a quarter of the 32 px kept
    Image.fromarray(strip).save(tmp_path / "strip.png")
    store = open_or_build([str(tmp_path / "strip.png")], cache_mod.StoreGeometry(37), tmp_path / "c",
                          log=lambda _: None)
    stored = store.load(0)
    assert stored.shape == (37, 148, 3)  # not 37 x 18500: at most 4 short sides long
    assert stored[:, 64:84].min() > 200 and stored[:, :40].max() < 50  # still in the centre
