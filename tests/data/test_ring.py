"""The shared-memory batch ring: each batch's slot and size, where its pixels sit in a slot, what is copied
out, and the fallback when /dev/shm is short."""

import os

import torch

from resnetcls.data.ring import SlotBatchSampler, copy_out, room_in_shared_memory, slot_pixels


class SizedOrder(list):
    image_size = 24  # what data/sampler.py's set_epoch leaves for a progressive epoch


def test_batches_take_the_slots_in_turn_and_carry_the_epochs_size():
    batches = list(SlotBatchSampler(SizedOrder(range(7)), 2, drop_last=False, slots=3))
    assert [list(b) for b in batches] == [[0, 1], [2, 3], [4, 5], [6]]
    assert [b.slot for b in batches] == [0, 1, 2, 0] and {b.size for b in batches} == {24}
    assert [b.size for b in SlotBatchSampler(range(4), 2, drop_last=True, slots=1)] == [None, None]


def test_a_smaller_crop_lives_in_the_first_bytes_of_a_slot_made_for_the_final_size():
    ring = torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8)
    small = slot_pixels(ring, 1, 3, 4)
    small.fill_(7)
    assert small.shape == (3, 4, 4, 3) and int(ring[1].sum()) == 7 * 3 * 4 * 4 * 3 and int(ring[0].sum()) == 0


def test_a_copied_out_batch_is_channels_last_and_independent_of_its_slot():
    ring = (
        torch.arange(2 * 2 * 4 * 4 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 2, 4, 4, 3)
    )
    pixels = slot_pixels(ring, 0, 2, 4).permute(0, 3, 1, 2)
    kept = copy_out(pixels, pin=False)
    ring.zero_()
    assert kept.shape == (2, 3, 4, 4) and kept.is_contiguous(memory_format=torch.channels_last)
    assert int(kept.sum()) > 0


def test_too_little_shared_memory_is_said_once_and_refused(monkeypatch, capsys):
    monkeypatch.setattr(
        os, "statvfs", lambda path: os.statvfs_result((4096, 4096, 100, 1, 1, 0, 0, 0, 0, 255))
    )
    assert not room_in_shared_memory(10**6)
    assert "too little for the 1 MB batch ring" in capsys.readouterr().err
    assert room_in_shared_memory(100)
