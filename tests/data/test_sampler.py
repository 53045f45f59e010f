"""ResumableSampler: exact mid-epoch resume with per-sample seeds; balanced sampling."""
import torch

from resnetcls.data.sampler import ResumableSampler


def test_sampler_resumes_at_the_exact_sample_and_seeds_each_sample():
    sampler = ResumableSampler(list(range(10)) * 3, "shuffle", seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, position=7)
    rest = list(sampler)
    assert rest == whole[7:] and [i.seed for i in rest] == [i.seed for i in whole[7:]]
    sampler.set_epoch(3)
    assert sorted(sampler) == sorted(whole) and list(sampler) != whole  # a new order each epoch


def test_balanced_sampler_draws_rare_classes_as_often():
    labels = [0] * 900 + [1] * 100
    sampler = ResumableSampler(labels, "balanced", seed=0)
    drawn = torch.tensor([labels[i] for i in sampler])
    assert len(drawn) == 1000 and 400 < int((drawn == 1).sum()) < 600
