"""The P x K batch sampler: distinct places, K images each, the same global batches on 1 and 2 ranks."""

import pytest

from dinov2.utils.errors import InputError
from dinov2_vpr.training.samplers import PlaceBatchSampler

# 11 places of 4 to 7 images, labels interleaved so that indices do not follow places.
LABELS = [index % 11 for index in range(60)]
P, K = 3, 4


def test_batches_hold_p_distinct_places_of_k_images():
    sampler = PlaceBatchSampler(LABELS, P, K, seed=1)
    assert len(sampler) == 11 // P == 3
    seen_places = set()
    for batch in sampler:
        assert len(batch) == P * K == len(set(batch))
        places = [LABELS[index] for index in batch]
        assert places == [place for place in places[::K] for _ in range(K)]
        assert len(set(places)) == P
        assert not seen_places & set(places)  # a place at most once an epoch
        seen_places |= set(places)


def test_reshuffled_every_epoch_and_seeded():
    sampler = PlaceBatchSampler(LABELS, P, K, seed=1)
    first = list(sampler)
    assert list(sampler) == first  # the same epoch again
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(PlaceBatchSampler(LABELS, P, K, seed=1)) == first
    assert list(PlaceBatchSampler(LABELS, P, K, seed=2)) != first


def test_the_same_global_batches_on_one_and_two_ranks():
    for epoch in range(3):
        samplers = [PlaceBatchSampler(LABELS, P, K, seed=5, rank=rank, world_size=2) for rank in range(2)]
        single = PlaceBatchSampler(LABELS, P, K, seed=5)
        for sampler in [*samplers, single]:
            sampler.set_epoch(epoch)
        for batch, rank0, rank1 in zip(single, *samplers, strict=True):
            assert rank0 == batch[0::2] and rank1 == batch[1::2]
        assert len(samplers[0]) == len(single)


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="fewer than 8 images"):
        PlaceBatchSampler(LABELS, P, 8)
    with pytest.raises(InputError, match="only 11"):
        PlaceBatchSampler(LABELS, 12, K)
    with pytest.raises(InputError, match="divisible by the number of ranks"):
        PlaceBatchSampler(LABELS, 3, 1, world_size=2)
