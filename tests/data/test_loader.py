"""build_loader: any sampler, worker processes, shared-memory batch slots and the cache-off path give the same
batches; data.on_bad=fail names every bad file before the first batch."""

import os

import pytest
import torch
from torch.utils.data import DistributedSampler

from resnetcls.data.loader import LoaderOptions, build_loader, known_bad_files
from resnetcls.data.sampler import ResumableSampler
from resnetcls.data.sources import Samples
from resnetcls.data.transforms import build_eval_batch_transform, build_train_transform, make_preprocess
from resnetcls.errors import UserError


def test_any_sampler_plugs_in_and_workers_read_the_store(photos, tmp_path):
    transform = build_eval_batch_transform(make_preprocess(16))
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(range(len(photos)), num_replicas=2, rank=rank, shuffle=True, seed=5)
        loader = build_loader(
            photos,
            transform,
            2,
            shuffle=True,
            num_workers=2,
            cache_dir=tmp_path,
            options=LoaderOptions(sampler=sampler),
        )
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
        # uint8_batches: what training on a GPU and lifelong mode build: they keep uint8 batches
        loader = build_loader(
            many,
            transform,
            2,
            shuffle=False,
            num_workers=workers,
            cache_dir=tmp_path,
            options=LoaderOptions(sampler=sampler, uint8_batches=not finish),
        )
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


def test_progressive_sizes_reach_the_workers_with_the_sampler_and_share_the_final_size_ring(photos, tmp_path):
    """Under data.progressive each epoch's size comes with the sampler's set_epoch; workers crop to it into
    ring slots made for the final size. Batches equal the in-process ones at every size, kept or not."""
    many = Samples(photos.paths * 2, photos.labels * 2, photos.classes)
    transform = build_train_transform(make_preprocess(32), "trivialaugment", random_erasing=0.5)

    def epochs(workers: int, finish: bool) -> list[dict]:
        sampler = ResumableSampler(many.labels, "shuffle", seed=7)
        loader = build_loader(
            many,
            transform,
            3,
            shuffle=False,
            num_workers=workers,
            cache_dir=tmp_path,
            options=LoaderOptions(sampler=sampler, uint8_batches=not finish),
        )
        kept = []
        for epoch, size in ((1, 16), (2, 24), (3, 32), (4, None)):
            sampler.set_epoch(epoch, 0, size)
            kept += [dict(b, size=size or 32) for b in loader]
        return kept

    for finish in (True, False):
        expected, got = epochs(0, finish), epochs(2, finish)
        assert len(got) == len(expected) > 4
        for want, have in zip(expected, got):
            assert have["index"].tolist() == want["index"].tolist()
            if want["images"] is not None:
                assert tuple(have["images"].shape[1:]) == (3, want["size"], want["size"])
                assert have["images"].dtype == (torch.float32 if finish else torch.uint8)
                assert torch.equal(have["images"], want["images"])


def test_little_shared_memory_gives_the_same_batches_and_says_so(photos, tmp_path, monkeypatch, capsys):
    """In a container with a small /dev/shm the loader skips its batch ring (and says why) but delivers the
    same batches."""
    transform = build_train_transform(make_preprocess(16))

    def epoch() -> list[dict]:
        sampler = ResumableSampler(photos.labels, "shuffle", seed=4)
        return list(
            build_loader(
                photos,
                transform,
                2,
                shuffle=False,
                num_workers=2,
                cache_dir=tmp_path,
                options=LoaderOptions(sampler=sampler),
            )
        )

    roomy = epoch()
    real_statvfs = os.statvfs
    monkeypatch.setattr(
        os,
        "statvfs",
        lambda path: (
            os.statvfs_result((4096, 4096, 100, 1, 1, 0, 0, 0, 0, 255))
            if path == "/dev/shm"
            else real_statvfs(path)
        ),
    )
    cramped = epoch()
    assert "note: /dev/shm has 0 MB free" in capsys.readouterr().err
    assert [b["index"].tolist() for b in cramped] == [b["index"].tolist() for b in roomy]
    assert all(
        torch.equal(a["images"], b["images"]) for a, b in zip(roomy, cramped) if a["images"] is not None
    )


def test_cache_off_decodes_on_the_fly_with_the_same_result(photos, tmp_path):
    preprocess = make_preprocess(32)
    cached = eval_batch(photos, preprocess, 0, tmp_path)
    fresh = eval_batch(photos, preprocess, 0, None)
    assert torch.equal(cached["images"], fresh["images"]) and cached["bad"] == fresh["bad"]


def eval_batch(samples, preprocess, store_size, cache_dir):
    loader = build_loader(
        samples,
        build_eval_batch_transform(preprocess, store_size),
        16,
        shuffle=False,
        num_workers=0,
        cache_dir=cache_dir,
    )
    return next(iter(loader))


def test_on_bad_fail_names_every_bad_file_before_any_batch(photos):
    transform = build_eval_batch_transform(make_preprocess(16))
    loader = build_loader(
        photos, transform, 4, shuffle=False, num_workers=0, options=LoaderOptions(on_bad="fail")
    )  # cache off
    with pytest.raises(UserError, match=r"^1 bad image \(data.on_bad=fail.*broken.jpg: "):
        known_bad_files("fail", loader)
    assert known_bad_files("skip", loader) == {photos.paths[2]: loader.dataset.bad_files[photos.paths[2]]}


@pytest.mark.parametrize("workers", [0, 2])
def test_augment_on_device_ships_canvases_and_each_batch_crops_them_where_it_is_finished(
    photos, tmp_path, workers
):
    """data.augment_on=device with device=cpu: the loader hands over uint8 canvases of the stored size
    (through the ring with workers), and the batch's own finish crops, flips and normalises them to the
    model's size; the same sampler seed gives the same finished batches."""
    many = Samples(photos.paths * 2, photos.labels * 2, photos.classes)
    transform = build_train_transform(make_preprocess(16), augment="trivialaugment", on_device=True)
    canvas = transform.device_crops.canvas

    def epoch() -> list[torch.Tensor]:
        loader = build_loader(
            many,
            transform,
            2,
            shuffle=False,
            num_workers=workers,
            cache_dir=tmp_path,
            options=LoaderOptions(
                sampler=ResumableSampler(many.labels, "shuffle", seed=1), uint8_batches=True
            ),
        )
        finished = []
        for batch in loader:
            assert batch["images"].dtype == torch.uint8 and batch["images"].shape[-2:] == (canvas, canvas)
            x = batch["finish"](batch["images"])
            assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (3, 16, 16)
            finished.append(x)
        return finished

    first, again = epoch(), epoch()
    assert len(first) >= 5 and all(torch.equal(a, b) for a, b in zip(first, again))
