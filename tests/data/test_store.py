"""The store format: decoded and compressed stores hold the same resized images, validate themselves when
opened, and a compressed store is decoded by the DataLoader workers that read it."""

import pickle

import numpy as np
import pytest

from resnetcls.data.geometry import StoreGeometry
from resnetcls.data.loader import LoaderOptions, build_loader
from resnetcls.data.store import InvalidStore, open_store, write_store
from resnetcls.data.transforms import build_eval_batch_transform, make_preprocess


@pytest.fixture
def stores(photos, tmp_path):
    geometry = StoreGeometry(37)
    for name, compressed in (("decoded", False), ("compressed", True)):
        write_store(tmp_path / name, photos.paths, geometry, workers=0, compressed=compressed)
    return open_store(tmp_path / "decoded", len(photos)), open_store(tmp_path / "compressed", len(photos))


def test_a_compressed_store_holds_the_decoded_stores_images_within_jpegs_loss(stores, photos):
    decoded, compressed = stores
    assert (decoded.kind, compressed.kind) == ("decoded", "compressed")
    assert compressed.bad_files == decoded.bad_files == {photos.paths[2]: decoded.bad[2]}
    for i in set(range(len(photos))) - set(decoded.bad):
        assert compressed.load(i).shape == decoded.load(i).shape and compressed.load(i).flags.writeable
        assert np.abs(compressed.load(i).astype(int) - decoded.load(i)).mean() < 4
    copy = pickle.loads(pickle.dumps(compressed))  # as it travels to a DataLoader worker
    assert (copy.load(3) == compressed.load(3)).all()


def test_a_truncated_compressed_store_is_invalid(stores):
    _, compressed = stores
    with open(compressed.directory / "data.u8", "r+b") as f:
        f.truncate(10)
    with pytest.raises(InvalidStore, match="data.u8 has 10 bytes"):
        open_store(compressed.directory)


def test_loader_workers_decode_a_compressed_store_into_the_same_batches(photos, tmp_path):
    transform = build_eval_batch_transform(make_preprocess(32))
    batches = {}
    for cache_format in ("decoded", "compressed"):
        loader = build_loader(
            photos,
            transform,
            8,
            shuffle=False,
            num_workers=2,
            cache_dir=tmp_path / cache_format,
            options=LoaderOptions(cache_format=cache_format),
        )
        batches[cache_format] = next(iter(loader))
        assert loader.dataset.store.kind == cache_format
    decoded, compressed = batches["decoded"], batches["compressed"]
    assert compressed["index"].tolist() == decoded["index"].tolist() and compressed["bad"] == decoded["bad"]
    assert (compressed["images"] - decoded["images"]).abs().mean() < 0.05  # normalised units
