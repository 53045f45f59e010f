"""The decoded cache guards itself: invalid stores are rebuilt, replaced files are noticed, the space a
build needs is checked first, the folder stays under data.cache_max_gb, and missing locks say what to do."""

import errno
import json
import os
import shutil

import pytest

from resnetcls.data import cache as cache_mod
from resnetcls.data.cache import StoreGeometry, cache_key, estimate_store_bytes, list_stores, open_or_build
from resnetcls.errors import UserError

GEOMETRY = StoreGeometry(37)


@pytest.fixture
def logged():
    lines = []
    return lines


def build(paths, cache_dir, logged, **kwargs):
    return open_or_build(paths, GEOMETRY, cache_dir, log=logged.append, **kwargs)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "meta.json").write_text("{not json"), "unreadable"),
        (lambda d: (d / "meta.json").write_text(json.dumps({"format": 1})), "format 1, not 2"),
        (lambda d: os.truncate(d / "data.u8", (d / "data.u8").stat().st_size // 2), "data.u8 has"),
        (lambda d: (d / "index.npy").write_bytes(b"\x93NUMPY garbage"), "unreadable"),
        (lambda d: (d / "index.npy").unlink(), "unreadable"),
    ],
)
def test_an_invalid_store_is_rebuilt_with_a_warning(photos, tmp_path, logged, damage, reason):
    store = build(photos.paths, tmp_path, logged)
    expected = store.load(0).copy()
    damage(store.directory)
    rebuilt = build(photos.paths, tmp_path, logged)
    warning = [line for line in logged if line.startswith("warning:")]
    assert len(warning) == 1 and f"decoded cache {store.directory} is invalid ({reason}" in warning[0]
    assert (rebuilt.load(0) == expected).all() and rebuilt.directory == store.directory


def test_a_replaced_file_with_the_same_size_and_mtime_is_a_new_key(photos, tmp_path):
    before = cache_key(photos.paths, GEOMETRY)
    st = os.stat(photos.paths[0])
    shutil.copyfile(photos.paths[0], photos.paths[0] + ".new")
    os.replace(photos.paths[0] + ".new", photos.paths[0])  # new inode and ctime, same bytes
    os.utime(photos.paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(photos.paths[0]).st_size == st.st_size
    assert cache_key(photos.paths, GEOMETRY) != before


def test_a_build_that_would_not_fit_is_refused_with_both_numbers(photos, tmp_path, monkeypatch, logged):
    monkeypatch.setattr(cache_mod, "free_bytes", lambda folder: 1000)
    needed = estimate_store_bytes(photos.paths, GEOMETRY)
    with pytest.raises(UserError) as e:
        build(photos.paths, tmp_path / "c", logged, cache_format="decoded")
    assert f"needs about {needed:,} bytes but only 1,000 bytes are free there" in str(e.value)
    assert not list((tmp_path / "c").glob("*/meta.json"))


def test_the_estimate_is_close_to_what_the_store_takes(photos, tmp_path, logged):
    store = build(photos.paths, tmp_path, logged)
    actual = (store.directory / "data.u8").stat().st_size
    assert actual <= estimate_store_bytes(photos.paths, GEOMETRY) <= 1.3 * actual


def test_least_recently_used_stores_are_pruned_to_stay_under_the_limit(photos, tmp_path, logged):
    first = build(photos.paths[:3], tmp_path, logged)
    second = build(photos.paths[3:], tmp_path, logged)
    build(photos.paths[:3], tmp_path, logged)  # first is used again: second is now the least recently used
    os.utime(second.directory / "meta.json", (1, 1))
    sizes = {folder.name: size for _, size, folder in list_stores(tmp_path)}
    # room for first + the new store, not for second as well
    limit_gb = (
        sizes[first.directory.name]
        + estimate_store_bytes(photos.paths, GEOMETRY)
        + sizes[second.directory.name] // 2
    ) / 1e9
    build(photos.paths, tmp_path, logged, max_gb=limit_gb)  # a third store: room is made for it
    left = {folder.name for _, _, folder in list_stores(tmp_path)}
    assert second.directory.name not in left and first.directory.name in left
    assert cache_key(photos.paths, GEOMETRY) in left
    assert any("deleted 1 least-recently-used decoded cache store(s)" in line for line in logged)
    assert sum(size for _, size, _ in list_stores(tmp_path)) <= limit_gb * 1e9


@pytest.mark.parametrize("cache_format", ["decoded", "compressed", "auto"])
def test_a_store_larger_than_the_limit_is_refused(photos, tmp_path, logged, cache_format):
    kind = "decoded" if cache_format == "decoded" else "compressed"  # auto tries compressed before refusing
    with pytest.raises(
        UserError,
        match=rf"the {kind} cache for these images needs about [\d,]+ bytes, more than "
        r"data\.cache_max_gb=1e-09; raise it",
    ):
        build(photos.paths, tmp_path, logged, max_gb=1e-9, cache_format=cache_format)


@pytest.mark.parametrize("short_of", ["the limit", "free space"])
def test_auto_stores_compressed_where_the_decoded_store_would_not_fit(
    photos, tmp_path, monkeypatch, logged, short_of
):
    decoded = build(photos.paths, tmp_path / "decoded", logged)
    room = int(0.6 * estimate_store_bytes(photos.paths, GEOMETRY))
    limit = {"max_gb": room / 1e9} if short_of == "the limit" else {}
    if short_of == "free space":
        monkeypatch.setattr(cache_mod, "free_bytes", lambda folder: room)
    else:  # the decoded store is refused at that limit, as data.cache_format=decoded asks
        with pytest.raises(UserError, match="the decoded cache for these images needs about"):
            build(photos.paths, tmp_path / "c", logged, cache_format="decoded", **limit)
    logged.clear()
    store = build(photos.paths, tmp_path / "c", logged, **limit)
    notes = [line for line in logged if line.startswith("note: a decoded cache of these 7 images")]
    over = "data.cache_max_gb=" if short_of == "the limit" else "free in "
    assert (
        len(notes) == 1
        and over in notes[0]
        and "storing them compressed instead (JPEG quality 90" in notes[0]
    )
    assert store.kind == "compressed" and store.note == notes[0] and store.bad_files == decoded.bad_files
    assert (store.directory / "data.u8").stat().st_size < room
    for i in (0, 1, 3):  # the same stored geometry, pixels within JPEG's loss
        assert store.load(i).shape == decoded.load(i).shape
        assert abs(store.load(i).astype(int) - decoded.load(i)).mean() < 4
    again = build(photos.paths, tmp_path / "c", logged, **limit)  # reused, and said again
    assert again.directory == store.directory and "storing them compressed instead" in again.note


def test_a_file_system_without_locks_says_what_to_do(photos, tmp_path, monkeypatch, logged):
    def no_locks(*_args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cache_mod.fcntl, "flock", no_locks)
    with pytest.raises(UserError) as e:
        build(photos.paths, tmp_path, logged)
    assert str(e.value) == (
        f"{tmp_path}: this file system does not support file locks (e.g. some network mounts), "
        f"which the decoded cache needs; set data.cache_dir (or RESNETCLS_CACHE) to a folder "
        f"on a local disk, or data.cache=false"
    )
