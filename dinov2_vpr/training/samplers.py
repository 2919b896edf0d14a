"""P x K batches: P distinct places and K images of each, the same global batches on any number of ranks."""

from collections.abc import Iterator, Sequence

import numpy as np

from dinov2.utils.errors import InputError


class PlaceBatchSampler:
    """Batches of ``places_per_batch`` (P) distinct places times ``images_per_place`` (K) images.

    Every epoch the places are shuffled and each place gives K of its images, drawn without
    replacement, from ``(seed, epoch)`` alone; consecutive groups of P places are the global
    batches (the last incomplete one is dropped), so no place is twice in a batch and every place
    is in at most one batch an epoch. A global batch lists the K images of its first place, then
    the K of the second, and so on. Rank ``r`` of ``world_size`` yields ``global_batch[r::world_size]``,
    so the global batches do not depend on the number of ranks. Usable as a DataLoader's
    ``batch_sampler``; call :meth:`set_epoch` before each epoch.

    Args:
        labels: the place label of each dataset index.
        places_per_batch: P.
        images_per_place: K; every place needs at least K images.
        seed: the shuffling seed.
        rank: this process's rank.
        world_size: the number of ranks; must divide P * K (every rank gets as many images).
    """

    def __init__(
        self,
        labels: Sequence[int],
        places_per_batch: int,
        images_per_place: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if places_per_batch < 1 or images_per_place < 1:
            raise InputError(f"P and K must be at least 1, got P={places_per_batch} and K={images_per_place}")
        if not 0 <= rank < world_size or (places_per_batch * images_per_place) % world_size:
            raise InputError(
                f"The batch of {places_per_batch} places x {images_per_place} images cannot be split evenly "
                f"over {world_size} ranks (rank {rank}); choose P * K divisible by the number of ranks"
            )
        by_label: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_label.setdefault(int(label), []).append(index)
        self.places = [np.asarray(indices) for _, indices in sorted(by_label.items())]
        small = [label for label, indices in sorted(by_label.items()) if len(indices) < images_per_place]
        if small:
            raise InputError(
                f"{len(small)} place(s) have fewer than {images_per_place} images (labels {small[:10]}); "
                "read them with read_places(..., images_per_place) to drop or report them"
            )
        if len(self.places) < places_per_batch:
            raise InputError(f"A batch needs {places_per_batch} places, but the dataset has only {len(self.places)}")
        self.places_per_batch = places_per_batch
        self.images_per_place = images_per_place
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches :meth:`__iter__` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.places) // self.places_per_batch

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches of dataset indices (the same on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.places))[: len(self) * self.places_per_batch]
        chosen = [rng.choice(self.places[place], self.images_per_place, replace=False) for place in order]
        flat = np.concatenate(chosen).reshape(len(self), -1)
        return flat.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's share of each global batch of the current epoch."""
        for batch in self.global_batches(self.epoch):
            yield batch[self.rank :: self.world_size]
