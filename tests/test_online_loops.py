"""The online loop detector: equal to the offline search with the exact index, restartable, close with HNSW and IVF."""

import numpy as np
import pytest

from dinov2.utils.errors import InputError
from dinov2_vpr.loops import IndexSettings, LoopCandidate, OnlineLoopDetector, find_loop_candidates

# Small enough that IVF trains mid-drive (64 * nlist = 256 frames) and searches 4 of its lists.
SMALL_IVF = IndexSettings(kind="ivf", nlist=4, nprobe=2)
SMALL_HNSW = IndexSettings(kind="hnsw", hnsw_m=8, ef_search=32, ef_construction=32)


def drive(laps: int = 2, frames_per_side: int = 50, dim: int = 48, noise: float = 0.15, seed: int = 0):
    """A square route of 200 m sides driven ``laps`` times (each lap offset by up to 2 m), then a new road.

    Descriptors are random Fourier features of the position (similarity falls with distance) plus noise;
    returns ``(positions, descriptors)``.
    """
    rng = np.random.default_rng(seed)
    side = np.linspace(0, 200, frames_per_side, endpoint=False)
    zeros, full = np.zeros_like(side), np.full_like(side, 200.0)
    square = np.concatenate(
        [np.stack(pair, axis=1) for pair in [(side, zeros), (full, side), (200 - side, full), (zeros, 200 - side)]]
    )
    road = np.stack([np.linspace(400, 800, frames_per_side), np.full(frames_per_side, 500.0)], axis=1)
    positions = np.concatenate([square + rng.uniform(-2, 2, size=2) for _ in range(laps)] + [road])
    phases = positions @ rng.normal(scale=1 / 10.0, size=(2, dim // 2))
    features = np.concatenate([np.cos(phases), np.sin(phases)], axis=1) + rng.normal(
        scale=noise, size=(len(positions), dim)
    )
    return positions, (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


def online(detector: OnlineLoopDetector, descriptors: np.ndarray, frames: range) -> list[LoopCandidate]:
    return [candidate for frame in frames for candidate in detector.add(frame, descriptors[frame])]


def pairs(candidates: list[LoopCandidate]) -> list[tuple]:
    return [(candidate.query, candidate.match) for candidate in candidates]


@pytest.fixture(scope="module")
def descriptors() -> np.ndarray:
    return drive()[1]


@pytest.mark.parametrize(
    ("threshold", "exclude_recent", "top_k"), [(0.6, 20, None), (0.6, 20, 1), (0.5, 0, 3), (0.8, 100, 2)]
)
def test_exact_online_equals_offline(descriptors, threshold, exclude_recent, top_k):
    expected = find_loop_candidates(descriptors, threshold, exclude_recent, chunk_size=64, top_k=top_k)
    detector = OnlineLoopDetector(threshold, exclude_recent, top_k)
    found = online(detector, descriptors, range(len(descriptors)))
    assert len(expected) > 100  # the second lap recognises the first
    assert pairs(found) == pairs(expected)
    np.testing.assert_allclose([c.similarity for c in found], [c.similarity for c in expected], rtol=0, atol=1e-6)
    assert all(c.match < c.query - exclude_recent and c.similarity >= threshold for c in found)


def test_ties_keep_the_earliest_matches_as_offline():
    # The car waits: 12 identical frames. Offline keeps the earliest of equally similar matches.
    rng = np.random.default_rng(3)
    waiting = np.repeat(rng.normal(size=(1, 16)), 12, axis=0)
    moving = rng.normal(size=(8, 16))
    descriptors = np.concatenate([moving[:4], waiting, moving[4:]])
    descriptors = (descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)).astype(np.float32)
    expected = find_loop_candidates(descriptors, 0.9, exclude_recent=2, top_k=3)
    found = online(OnlineLoopDetector(0.9, 2, top_k=3), descriptors, range(len(descriptors)))
    assert pairs(found) == pairs(expected)
    assert pairs(found)[-3:] == [(15, 4), (15, 5), (15, 6)]


@pytest.mark.parametrize("index", ["exact", SMALL_HNSW, SMALL_IVF])
@pytest.mark.parametrize("descriptor_dtype", ["float32", "float16"])
def test_save_and_load_mid_sequence_changes_nothing(descriptors, tmp_path, index, descriptor_dtype):
    settings = {
        "threshold": 0.6,
        "exclude_recent": 20,
        "top_k": 2,
        "index": index,
        "descriptor_dtype": descriptor_dtype,
    }
    uninterrupted = online(OnlineLoopDetector(**settings), descriptors, range(len(descriptors)))
    first = OnlineLoopDetector(**settings)
    before = online(first, descriptors, range(300))  # past IVF training (256 frames)
    first.add("not-a-loop", descriptor=-descriptors[300], position=(1.0, 2.0))  # a str id among the ints
    first.metadata["note"] = "kept"
    first.save(tmp_path / "state.npz")
    resumed = OnlineLoopDetector.load(tmp_path / "state.npz")
    assert len(resumed) == 301 and resumed.frame_ids == first.frame_ids and resumed.metadata == {"note": "kept"}
    assert resumed.position("not-a-loop") == (1.0, 2.0) and resumed.position(0) is None
    assert resumed.descriptors.dtype == np.dtype(descriptor_dtype)
    np.testing.assert_array_equal(resumed.descriptors, first.descriptors)
    assert resumed.describe_index() == first.describe_index()
    after = online(resumed, descriptors, range(301, len(descriptors)))
    both = online(first, descriptors, range(301, len(descriptors)))
    assert after == both  # the saved detector and the one that ran on go on identically
    if descriptor_dtype == "float32":
        # Frame 300 was replaced by a frame that looks like nothing, so only frames it could be matched by differ.
        kept = [c for c in uninterrupted if 300 not in (c.query, c.match)]
        assert pairs([c for c in before + after if "not-a-loop" not in (c.query, c.match)]) == pairs(kept)


@pytest.mark.parametrize("index", [SMALL_HNSW, SMALL_IVF])
def test_approximate_indexes_find_the_exact_candidates(index):
    _, descriptors = drive(laps=3, frames_per_side=100, seed=1)
    exact = set(pairs(online(OnlineLoopDetector(0.6, 30, 3), descriptors, range(len(descriptors)))))
    detector = OnlineLoopDetector(0.6, 30, 3, index)
    approximate = set(pairs(online(detector, descriptors, range(len(descriptors)))))
    assert len(exact) > 500
    assert detector.describe_index()["searching"]["kind"] == index.kind  # IVF has trained
    assert len(exact & approximate) / len(exact) >= 0.98


def test_extend_is_add_without_answers(descriptors):
    added = OnlineLoopDetector(0.6, 20, 2, SMALL_IVF)
    online(added, descriptors, range(350))
    extended = OnlineLoopDetector(0.6, 20, 2, SMALL_IVF)
    extended.extend(list(range(300)), descriptors[:300])
    extended.extend(list(range(300, 350)), descriptors[300:350], positions=np.zeros((50, 2)))
    assert extended.describe_index() == added.describe_index() and extended.position(320) == (0.0, 0.0)
    frames = range(350, len(descriptors))
    assert online(extended, descriptors, frames) == online(added, descriptors, frames)


class FlipModel:
    """A stand-in place model: an "image" is a vector, its descriptor the normalised vector."""

    def describe(self, images):
        vectors = np.asarray(images, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_images_are_described_by_the_model(descriptors):
    detector = OnlineLoopDetector(0.6, 0, model=FlipModel())
    detector.add("a", image=3 * descriptors[0])
    [candidate] = detector.add("b", image=descriptors[0] * 0.5)
    assert (candidate.query, candidate.match) == ("b", "a") and candidate.similarity == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs the detector's model"):
        OnlineLoopDetector(0.6, 0).add("c", image=descriptors[0])
    with pytest.raises(ValueError, match="either a descriptor or an image"):
        detector.add("c", descriptor=descriptors[0], image=descriptors[0])


def test_bad_input_says_which(descriptors, tmp_path):
    detector = OnlineLoopDetector(0.6, 0)
    detector.add("frame-1", descriptors[0])
    with pytest.raises(InputError, match="'frame-1' is already in the map"):
        detector.add("frame-1", descriptors[1])
    with pytest.raises(InputError, match="frame 'frame-2' has dimension 16; the map's descriptors have 48"):
        detector.add("frame-2", descriptors[1, :16] / np.linalg.norm(descriptors[1, :16]))
    with pytest.raises(InputError, match="frame 'frame-2'.*L2-normalised"):
        detector.add("frame-2", descriptors[1] * 2)
    with pytest.raises(InputError, match="appears twice"):
        detector.extend(["x", "x"], descriptors[:2])
    assert len(detector) == 1  # nothing was added by the failed calls
    with pytest.raises(InputError, match="exclude_recent"):
        OnlineLoopDetector(0.6, -1)
    with pytest.raises(InputError, match="top_k"):
        OnlineLoopDetector(0.6, 0, top_k=0)
    with pytest.raises(InputError, match="Unknown index kind 'annoy'"):
        OnlineLoopDetector(0.6, 0, index="annoy")
    (tmp_path / "junk.npz").write_bytes(b"not a state")
    with pytest.raises(InputError, match="junk.npz is not a saved loop detector state"):
        OnlineLoopDetector.load(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="does not exist"):
        OnlineLoopDetector.load(tmp_path / "missing.npz")
