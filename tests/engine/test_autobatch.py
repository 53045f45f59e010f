"""`train --batch-size auto` on a CPU: the fastest candidate per image, printed and recorded in config.yaml."""
import yaml

from resnetcls.engine.autobatch import CANDIDATES, candidate_batches, fastest_batch
from tests.conftest import TINY, run_cli


def test_fastest_batch_is_the_most_images_per_second_ties_to_the_smaller():
    assert fastest_batch({16: 100.0, 32: 180.0, 64: 150.0}) == 32
    assert fastest_batch({64: 200.0, 16: 200.0}) == 16


def test_candidates_fit_the_training_set():
    assert candidate_batches(40) == [16, 32]
    assert candidate_batches(5) == [CANDIDATES[0]]
    assert candidate_batches(10_000) == list(CANDIDATES)


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
