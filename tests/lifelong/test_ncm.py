"""The `ncm` strategy: nearest-class-mean prediction (known answers on planted prototypes), and `resnetcls
lifelong --strategy ncm` end to end on the tiny two-task manifest (R, metrics, final/, exact resume)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from resnetcls.lifelong.ncm import (
    class_prototypes,
    first_per_class,
    merge_prototypes,
    nearest_prototype,
    pooled_features,
    prototype_classifier,
    prototype_head,
)
from tests.conftest import run_cli
from tests.lifelong.conftest import ARGS


def read_json(path):
    return json.loads(path.read_text())


PLANTED = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5]])


def test_a_feature_is_predicted_as_its_nearest_prototype_in_cosine():
    features = torch.tensor([[0.1, 5.0, 0.2], [3.0, 0.1, 0.0], [0.0, 0.1, 0.2], [-1.0, -1.0, 0.1]])
    assert nearest_prototype(features, PLANTED).tolist() == [1, 0, 2, 2]


def test_the_prototype_head_predicts_as_the_nearest_prototype_whatever_the_feature_length():
    features = torch.randn(64, 3) * torch.rand(64, 1) * 10
    head = prototype_head(PLANTED)
    assert head.bias.abs().sum() == 0
    assert torch.equal(head(features).argmax(dim=1), nearest_prototype(features, PLANTED))


def test_prototypes_are_means_of_the_normalised_features_per_class():
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [5.0, 0.0], [0.0, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    means, counts = class_prototypes(features, labels, 3)
    assert torch.allclose(means, torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]]))
    assert counts.tolist() == [2, 2, 0]


def test_at_most_the_first_images_of_each_class_are_kept():
    keep = first_per_class(torch.tensor([0, 1, 0, 0, 1, 2]), 2)
    assert keep.tolist() == [True, True, True, False, True, True]


def test_merged_prototypes_keep_the_earlier_rows_of_classes_without_new_images():
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    new = torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.8, 0.6]])
    merged = merge_prototypes(old, new, torch.tensor([3, 0, 2]))
    assert torch.equal(merged, torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.8, 0.6]]))


class Pooled(nn.Module):
    """A network whose pooled features are its input: fc over them, as a ResNet's head."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward_features(self, x):
        return x

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_within_the_block_the_network_predicts_by_prototype_and_its_trained_head_comes_back():
    model = Pooled()
    trained = model.fc
    images = torch.tensor([[0.0, 0.0, 4.0], [0.2, 3.0, 0.0]])
    features, labels = pooled_features(model, [(images, torch.tensor([2, 1]))])
    assert torch.equal(features, images) and labels.tolist() == [2, 1]
    with prototype_classifier(model, PLANTED) as classifier:
        assert classifier(images).argmax(dim=1).tolist() == [2, 1]
    assert model.fc is trained
    with prototype_classifier(model, None) as classifier:
        assert classifier.fc is trained


NCM = [*ARGS, "--strategy", "ncm", "--buffer-size", "6"]


@pytest.fixture(scope="module")
def ncm_run(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("ncm") / "run"
    r = run_cli("lifelong", manifest, *NCM, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_ncm_writes_its_matrix_metrics_and_a_model_that_predicts_by_prototype(ncm_run):
    R = read_json(ncm_run / "R.json")
    assert R["tasks"] == ["light=bright", "light=dark"] and len(R["R"]) == 2
    m = read_json(ncm_run / "metrics.json")
    assert m["strategy"] == "ncm" and m["buffer_images"] == 6
    assert m["ACC"] == pytest.approx(sum(R["R"][1]) / 2)
    assert m["BWT"] == pytest.approx(R["R"][1][0] - R["R"][0][0])
    assert m["model_params"] > 0 and m["model_mb"] > 0
    assert m["inference_ms_batch1"] > 0 and m["device"] == "cpu" and m["device_name"]
    weights = load_file(str(ncm_run / "final" / "model.safetensors"))
    assert weights["fc.weight"].shape[0] == 3 and weights["fc.bias"].abs().sum() == 0
    assert torch.allclose(weights["fc.weight"].norm(dim=1), torch.ones(3), atol=1e-5)  # unit prototypes


def test_ncm_prototypes_are_in_the_checkpoint_and_a_resume_gives_the_same_matrix_and_weights(
    manifest, ncm_run, tmp_path
):
    out = tmp_path / "run"
    first = run_cli("lifelong", manifest, *NCM, "--out", out, "--stop-after", "1")
    assert first.returncode == 0, first.stderr
    saved = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert saved["extra"]["strategy"]["prototypes"].shape[0] == 2  # task 1's two classes
    resumed = run_cli("lifelong", manifest, *NCM, "--out", out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "task 1/2 light=bright" not in resumed.stderr
    assert read_json(out / "R.json") == read_json(ncm_run / "R.json")
    a, b = (
        load_file(str(out / "final/model.safetensors")),
        load_file(str(ncm_run / "final/model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_final_model_scores_with_eval_what_the_matrix_last_row_says(ncm_run, manifest, tmp_path):
    """final/ carries the prototype head: `resnetcls eval` on every task's test images (4 bright, 6 dark)
    scores the image-weighted mean of R's last row."""
    r = run_cli("eval", ncm_run / "final", manifest, "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    last = read_json(ncm_run / "R.json")["R"][-1]
    assert read_json(tmp_path / "eval" / "metrics.json")["top1"] == pytest.approx(
        (4 * last[0] + 6 * last[1]) / 10
    )


def test_ncm_without_a_buffer_trains_as_naive_and_still_predicts_by_prototype(manifest, tmp_path):
    r = run_cli("lifelong", manifest, *ARGS, "--strategy", "ncm", "--buffer-size", "0", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    m = read_json(tmp_path / "metrics.json")
    assert m["strategy"] == "ncm" and m["buffer_images"] == 0 and len(m["R"]) == 2
    assert load_file(str(tmp_path / "final" / "model.safetensors"))["fc.bias"].abs().sum() == 0
