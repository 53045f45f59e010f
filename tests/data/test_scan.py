"""Decoding on all cores: a worker killed by one file names it, and bad files are found before training."""

import os

import pytest

from resnetcls.data import scan as scan_mod
from resnetcls.errors import UserError


def _die_on_boom(item: str) -> str:
    if item == "boom":
        os._exit(9)  # what the kernel's OOM killer does to a worker
    return item.upper()


def test_a_worker_killed_by_one_item_names_it_and_the_rest_still_complete():
    items = [f"f{i}" for i in range(80)]
    items[37] = "boom"
    out = list(scan_mod.parallel_map(_die_on_boom, items, workers=2, on_crash=lambda item: f"crashed {item}"))
    assert out == [("crashed boom" if i == "boom" else i.upper()) for i in items]
    with pytest.raises(UserError, match="^boom: decoding this image killed its worker process"):
        list(scan_mod.parallel_map(_die_on_boom, items, workers=2))


def test_find_bad_files_names_each_undecodable_file_with_its_reason(photos):
    bad = scan_mod.find_bad_files(photos.paths, workers=0)
    assert list(bad) == [photos.paths[2]] and bad[photos.paths[2]]  # only the broken file, with a reason
