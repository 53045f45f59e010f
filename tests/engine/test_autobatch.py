"""`train --batch-size auto`: on a CPU the fastest candidate per image; on a GPU the largest batch that fits,
searched against a fits(batch) probe (here a simulated memory limit), with gradient accumulation keeping the
recipe's effective batch; printed and recorded in config.yaml."""

import pytest
import torch
import yaml

from resnetcls.engine import autobatch
from resnetcls.engine.autobatch import (
    CANDIDATES,
    MAX_BATCH,
    candidate_batches,
    cuda_memory_probe,
    fastest_batch,
    keep_effective_batch,
    plan_gpu_batch,
    search_largest_batch,
    with_margin,
)
from resnetcls.errors import UserError
from tests.conftest import TINY, run_cli


def test_fastest_batch_is_the_most_images_per_second_ties_to_the_smaller():
    assert fastest_batch({16: 100.0, 32: 180.0, 64: 150.0}) == 32
    assert fastest_batch({64: 200.0, 16: 200.0}) == 16


def test_candidates_fit_the_training_set():
    assert candidate_batches(40) == [16, 32]
    assert candidate_batches(5) == [CANDIDATES[0]]
    assert candidate_batches(10_000) == list(CANDIDATES)


class MemoryLimit:
    """A simulated GPU: a batch fits when it is at most `largest`; every try is remembered."""

    def __init__(self, largest: int) -> None:
        self.largest, self.tried = largest, []

    def __call__(self, batch: int) -> bool:
        self.tried.append(batch)
        return batch <= self.largest


@pytest.mark.parametrize("largest", [1, 7, 16, 17, 100, 250, 1000, 3000])
def test_the_search_finds_the_largest_batch_that_fits_within_its_tolerance(largest):
    fits = MemoryLimit(largest)
    found = search_largest_batch(fits, limit=10_000)
    assert found <= largest and largest - found <= max(0, found // autobatch.BISECT_TOLERANCE)
    assert found == 0 or found in fits.tried  # it reports a batch it tried and that fitted
    assert len(fits.tried) <= 2 * 14  # doubling and bisecting: logarithmic in the limit, not linear


def test_everything_fits_capped_at_the_training_set_or_the_maximum_without_margin():
    plan = plan_gpu_batch(
        MemoryLimit(10**9), train_images=300, batch_size=32, grad_accum_steps=1, image_size=224
    )
    assert (plan.batch_size, plan.grad_accum_steps, plan.capped) == (300, 1, True)
    plan = plan_gpu_batch(
        MemoryLimit(10**9), train_images=10**6, batch_size=32, grad_accum_steps=1, image_size=224
    )
    assert plan.batch_size == MAX_BATCH and plan.capped


def test_memory_bound_takes_90_percent_rounded_down_to_a_multiple_of_8():
    plan = plan_gpu_batch(
        MemoryLimit(250), train_images=10_000, batch_size=32, grad_accum_steps=1, image_size=224
    )
    assert plan.largest_fit <= 250 and plan.batch_size == with_margin(plan.largest_fit)
    assert plan.batch_size % 8 == 0 and plan.batch_size <= 0.9 * 250 and plan.grad_accum_steps == 1
    assert with_margin(250) == 224 and with_margin(9) == 8 and with_margin(5) == 4 and with_margin(1) == 1


def test_when_memory_is_short_accumulation_keeps_the_recipes_effective_batch():
    # 100 fit -> 88 with the margin; the recipe asks for 256: 3 steps of 86 (258 >= 256, each <= 88).
    plan = plan_gpu_batch(
        MemoryLimit(100), train_images=10_000, batch_size=256, grad_accum_steps=1, image_size=224
    )
    assert (plan.batch_size, plan.grad_accum_steps) == (86, 3)
    assert keep_effective_batch(64, 256, 1) == (64, 4)
    assert keep_effective_batch(48, 64, 2) == (43, 3)  # a recipe already accumulating: 64 x 2 = 128
    assert keep_effective_batch(512, 64, 2) == (512, 2)  # memory to spare: the largest, accumulation as given


def test_nothing_fits_is_a_user_error_naming_the_image_size():
    with pytest.raises(UserError, match=r"not even a batch of 1 fits .* image size 384"):
        plan_gpu_batch(MemoryLimit(0), train_images=1000, batch_size=32, grad_accum_steps=1, image_size=384)


def test_the_cuda_probe_turns_out_of_memory_into_false_and_frees_the_cache(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def step(batch: int) -> None:
        if batch > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if batch == 13:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR: out of memory")

    fits = cuda_memory_probe(step)
    assert fits(32) is True and fits(64) is False and fits(13) is False
    assert len(emptied) == 3  # after every try, the failed ones included
    plan = plan_gpu_batch(
        cuda_memory_probe(step), train_images=1000, batch_size=32, grad_accum_steps=1, image_size=64
    )
    assert plan.largest_fit == 40 and plan.batch_size == 32


def test_the_cuda_probe_lets_other_errors_through():
    def step(batch: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        cuda_memory_probe(step)(8)


def test_train_batch_size_auto_records_and_prints_the_choice(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = [a for a in TINY]
    i = args.index("--batch-size")
    args[i + 1] = "auto"
    r = run_cli("train", tiny_data, *args, "--epochs", "1", "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    batch = yaml.safe_load((out / "config.yaml").read_text())["train"]["batch_size"]
    assert batch in candidate_batches(36)
    assert f"--batch-size auto: {batch} (" in r.stderr


def test_bad_batch_size_exits_2_naming_the_flag(tiny_data, tmp_path):
    r = run_cli("train", tiny_data, "--batch-size", "big", "--out", tmp_path / "run")
    assert r.returncode == 2 and "--batch-size" in r.stderr
