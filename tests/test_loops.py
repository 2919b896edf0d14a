import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve

from dinov2_vpr.loops import (
    LoopCandidate,
    best_earlier_match,
    downsampled_similarity,
    find_loop_candidates,
    loop_detection_metrics,
    loop_precision_recall_curve,
    similarity_matrix_image,
    true_loops,
)

RADIUS = 10.0


def place_descriptors(positions: np.ndarray, dim: int, noise: float, seed: int) -> np.ndarray:
    """Random Fourier features of the position (similarity falls off with distance) plus noise, normalised."""
    rng = np.random.default_rng(seed)
    frequencies = rng.normal(scale=1 / 8.0, size=(2, dim // 2))
    phases = positions @ frequencies
    features = np.concatenate([np.cos(phases), np.sin(phases)], axis=1)
    features += rng.normal(scale=noise, size=features.shape)
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def trajectory() -> np.ndarray:
    """A square route (frames 0-159, its end back at its start) driven again (160-319) slightly offset, then a
    new road (320-399)."""
    side = np.linspace(0, 200, 40, endpoint=False)
    zeros, full = np.zeros_like(side), np.full_like(side, 200.0)
    square = np.concatenate(
        [np.stack(pair, axis=1) for pair in [(side, zeros), (full, side), (200 - side, full), (zeros, 200 - side)]]
    )
    revisit = square + np.array([1.5, -1.0])
    new_road = np.stack([np.linspace(300, 700, 80), np.full(80, 500.0)], axis=1)
    return np.concatenate([square, revisit, new_road])


@pytest.fixture(scope="module")
def descriptors(trajectory: np.ndarray) -> np.ndarray:
    return place_descriptors(trajectory, dim=64, noise=0.05, seed=0)


def eligible_matrix(size: int, exclude_recent: int) -> np.ndarray:
    rows, columns = np.indices((size, size))
    return columns < rows - exclude_recent


def full_similarities(descriptors: np.ndarray, exclude_recent: int) -> np.ndarray:
    similarities = descriptors @ descriptors.T
    return np.where(eligible_matrix(len(descriptors), exclude_recent), similarities, -np.inf)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 400, 1000])
@pytest.mark.parametrize("exclude_recent", [0, 5, 30])
def test_best_earlier_match_equals_full_matrix(descriptors, chunk_size, exclude_recent):
    reference = full_similarities(descriptors, exclude_recent)
    has_eligible = np.arange(len(descriptors)) > exclude_recent
    best_j, best_sim = best_earlier_match(descriptors, exclude_recent, chunk_size)
    np.testing.assert_array_equal(best_j, np.where(has_eligible, reference.argmax(axis=1), -1))
    np.testing.assert_allclose(best_sim, reference.max(axis=1), rtol=0, atol=1e-6)
    assert np.isneginf(best_sim[~has_eligible]).all()


@pytest.mark.parametrize("chunk_size", [1, 13, 128, 400])
@pytest.mark.parametrize("top_k", [None, 1, 3])
def test_loop_candidates_equal_full_matrix(descriptors, chunk_size, top_k):
    threshold, exclude_recent = 0.6, 20
    reference = full_similarities(descriptors, exclude_recent)
    expected = []
    for query, row in enumerate(reference):
        matches = [match for match in np.argsort(-row, kind="stable") if row[match] >= threshold]
        expected += [(query, int(match)) for match in matches[:top_k]]
    candidates = find_loop_candidates(descriptors, threshold, exclude_recent, chunk_size, top_k)
    assert [(candidate.query, candidate.match) for candidate in candidates] == expected
    similarities = np.array([candidate.similarity for candidate in candidates])
    np.testing.assert_allclose(similarities, [reference[query, match] for query, match in expected], atol=1e-6)
    assert all(candidate.match < candidate.query - exclude_recent for candidate in candidates)


def test_loop_candidates_find_the_revisits(descriptors, trajectory):
    candidates = find_loop_candidates(descriptors, threshold=0.7, exclude_recent=20, chunk_size=64, top_k=1)
    assert candidates and all(isinstance(candidate, LoopCandidate) for candidate in candidates)
    distances = [np.linalg.norm(trajectory[c.query] - trajectory[c.match]) for c in candidates]
    assert max(distances) <= RADIUS
    queries = {candidate.query for candidate in candidates}
    # Almost every frame of the second lap (160-319) recognises the first lap; the new road never loops.
    assert len(queries & set(range(160, 320))) >= 150
    assert not queries & set(range(320, 400))


def test_loop_candidates_with_nothing_eligible(descriptors):
    assert find_loop_candidates(descriptors[:10], threshold=-1.0, exclude_recent=10) == []
    best_j, best_sim = best_earlier_match(descriptors[:10], exclude_recent=10, chunk_size=3)
    assert (best_j == -1).all() and np.isneginf(best_sim).all()


def test_loop_functions_reject_bad_input(descriptors):
    with pytest.raises(ValueError, match="L2-normalised"):
        best_earlier_match(descriptors * 2, exclude_recent=0)
    with pytest.raises(ValueError, match="exclude_recent"):
        find_loop_candidates(descriptors, 0.5, exclude_recent=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        best_earlier_match(descriptors, exclude_recent=0, chunk_size=0)
    with pytest.raises(ValueError, match="top_k"):
        find_loop_candidates(descriptors, 0.5, exclude_recent=0, top_k=0)


@pytest.mark.parametrize("chunk_size", [1, 50, 1000])
@pytest.mark.parametrize("exclude_recent", [0, 20])
def test_true_loops_against_brute_force(trajectory, chunk_size, exclude_recent):
    distances = np.linalg.norm(trajectory[:, None] - trajectory[None], axis=2)
    expected = ((distances <= RADIUS) & eligible_matrix(len(trajectory), exclude_recent)).any(axis=1)
    np.testing.assert_array_equal(true_loops(trajectory, RADIUS, exclude_recent, chunk_size), expected)
    if exclude_recent == 20:
        assert expected[158:320].all() and not expected[:158].any() and not expected[320:].any()


@pytest.mark.parametrize(("max_side", "chunk_size"), [(400, 64), (50, 64), (37, 1000), (7, 3)])
def test_downsampled_similarity_is_max_pooled_full_matrix(descriptors, max_side, chunk_size):
    similarities = descriptors @ descriptors.T
    step = math.ceil(len(descriptors) / max_side)
    side = math.ceil(len(descriptors) / step)
    expected = np.full((side, side), -np.inf, dtype=np.float32)
    for row in range(side):
        for column in range(side):
            block = similarities[row * step : (row + 1) * step, column * step : (column + 1) * step]
            expected[row, column] = block.max()
    shrunk = downsampled_similarity(descriptors, max_side, chunk_size)
    assert shrunk.shape == (side, side) and side <= max_side
    np.testing.assert_allclose(shrunk, expected, atol=1e-6)


def test_similarity_matrix_image_is_a_png(descriptors, tmp_path):
    path = tmp_path / "plots" / "similarity.png"
    similarity_matrix_image(descriptors, path, max_side=100, chunk_size=64)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 300
    assert [file.name for file in path.parent.iterdir()] == ["similarity.png"]


def detection_scores(trajectory: np.ndarray, exclude_recent: int, seed: int):
    """Best earlier matches of noisy descriptors (some of them wrong) and their correctness."""
    noisy = place_descriptors(trajectory, dim=16, noise=0.6, seed=seed)
    best_j, best_sim = best_earlier_match(noisy, exclude_recent, chunk_size=100)
    evaluated = best_j >= 0
    correct = evaluated & (np.linalg.norm(trajectory - trajectory[np.maximum(best_j, 0)], axis=1) <= RADIUS)
    return best_j, best_sim, evaluated, correct


def test_loop_metrics_against_sklearn_and_counting(trajectory):
    exclude_recent = 20
    best_j, best_sim, evaluated, correct = detection_scores(trajectory, exclude_recent, seed=1)
    num_loops = int(true_loops(trajectory, RADIUS, exclude_recent).sum())
    num_correct = int(correct.sum())
    assert 0 < num_correct < num_loops, "the noisy data should mix right and wrong matches"
    assert (correct[evaluated] != (best_sim[evaluated] > np.median(best_sim[evaluated]))).any()

    metrics = loop_detection_metrics(best_j, best_sim, trajectory, RADIUS, exclude_recent, threshold=0.5)
    assert metrics["frames"] == len(trajectory)
    assert metrics["evaluated_frames"] == len(trajectory) - exclude_recent - 1
    assert metrics["true_loop_frames"] == num_loops == 162  # the second lap and the end of the first
    assert metrics["correct_best_matches"] == num_correct
    expected_ap = average_precision_score(correct[evaluated], best_sim[evaluated]) * num_correct / num_loops
    assert metrics["average_precision"] == pytest.approx(expected_ap, abs=1e-12)

    # Brute-force sweep over every distinct score as threshold.
    sweep = []
    for threshold in np.unique(best_sim[evaluated]):
        detected = evaluated & (best_sim >= threshold)
        true_positives = (detected & correct).sum()
        precision, recall = true_positives / detected.sum(), true_positives / num_loops
        f1 = 2 * precision * recall / (precision + recall) if true_positives else 0.0
        sweep.append((threshold, precision, recall, f1))
    best = max(sweep, key=lambda row: row[3])
    assert metrics["best_f1"] == pytest.approx(best[3])
    assert metrics["best_f1_threshold"] == pytest.approx(best[0])
    assert metrics["best_f1_precision"] == pytest.approx(best[1])
    assert metrics["best_f1_recall"] == pytest.approx(best[2])
    assert metrics["recall_at_100_precision"] == pytest.approx(max([0.0] + [r for _, p, r, _ in sweep if p == 1]))

    detected = evaluated & (best_sim >= 0.5)
    assert metrics["precision_at_threshold"] == pytest.approx((detected & correct).sum() / detected.sum())
    assert metrics["recall_at_threshold"] == pytest.approx((detected & correct).sum() / num_loops)

    precision, recall, thresholds = loop_precision_recall_curve(best_j, best_sim, trajectory, RADIUS, exclude_recent)
    sk_precision, sk_recall, sk_thresholds = precision_recall_curve(correct[evaluated], best_sim[evaluated])
    np.testing.assert_allclose(precision, sk_precision)
    np.testing.assert_allclose(recall, sk_recall * num_correct / num_loops)
    np.testing.assert_allclose(thresholds, sk_thresholds)


def test_loop_metrics_equal_sklearn_when_every_true_loop_is_found(trajectory, descriptors):
    # Clean descriptors: every frame with a true loop finds a correct match, so recall is sklearn's.
    exclude_recent = 20
    best_j, best_sim = best_earlier_match(descriptors, exclude_recent)
    evaluated = best_j >= 0
    correct = evaluated & (np.linalg.norm(trajectory - trajectory[np.maximum(best_j, 0)], axis=1) <= RADIUS)
    assert correct.sum() == true_loops(trajectory, RADIUS, exclude_recent).sum()
    metrics = loop_detection_metrics(best_j, best_sim, trajectory, RADIUS, exclude_recent)
    expected_ap = average_precision_score(correct[evaluated], best_sim[evaluated])
    assert metrics["average_precision"] == pytest.approx(expected_ap)
    assert metrics["average_precision"] > 0.99 and metrics["best_f1"] > 0.99
    assert "precision_at_threshold" not in metrics


def test_loop_metrics_edge_cases(trajectory):
    new_road = trajectory[320:]
    best_j, best_sim = best_earlier_match(place_descriptors(new_road, 16, 0.1, seed=2), exclude_recent=5)
    no_loops = loop_detection_metrics(best_j, best_sim, new_road, RADIUS, 5, threshold=0.5)
    assert no_loops["true_loop_frames"] == 0 and math.isnan(no_loops["average_precision"])
    assert math.isnan(no_loops["recall_at_threshold"])

    # Out along a road and back: the way back has true loops, but every best match is frame 0, always wrong.
    road = np.stack([20.0 * np.arange(20), np.zeros(20)], axis=1)
    there_and_back = np.concatenate([road, road[1:][::-1]])
    wrong_j = np.where(np.arange(len(there_and_back)) > 2, 0, -1)
    wrong_sim = np.where(wrong_j >= 0, 0.9, -np.inf).astype(np.float32)
    all_wrong = loop_detection_metrics(wrong_j, wrong_sim, there_and_back, RADIUS, 2, threshold=0.5)
    assert all_wrong["true_loop_frames"] == 18 and all_wrong["correct_best_matches"] == 0
    assert all_wrong["average_precision"] == 0 and all_wrong["best_f1"] == 0
    assert all_wrong["precision_at_threshold"] == 0 and all_wrong["recall_at_threshold"] == 0
    with pytest.raises(ValueError, match="exclude_recent=30"):
        loop_detection_metrics(best_j, best_sim, new_road, RADIUS, 30)
    with pytest.raises(ValueError, match="one value per frame"):
        loop_detection_metrics(best_j[:-1], best_sim[:-1], new_road, RADIUS, 5)
