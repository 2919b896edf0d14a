import csv

import numpy as np
import pytest
from PIL import Image

from dinov2_vpr.data.positions import parse_utm, read_positions_csv, utm_positions
from dinov2_vpr.retrieval.pictures import (
    MISSING_COLOUR,
    NEGATIVE_COLOUR,
    POSITIVE_COLOUR,
    QUERY_COLOUR,
    TILE_SIZE,
    grid_size,
    plot_recall_at_k,
    save_query_grids,
    tile_origin,
)
from dinov2_vpr.retrieval.recall import (
    evaluate_retrieval,
    is_positive,
    positives_within,
    recall_at_k,
    write_predictions_csv,
)
from dinov2_vpr.retrieval.search import build_index, describe_index, search

K_VALUES = (1, 5, 10, 20)


def normalised(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def place_descriptors(positions: np.ndarray, noise: float, rng: np.random.Generator, dim: int = 32) -> np.ndarray:
    """Random Fourier features of the position (fixed frequencies), so that nearby places look alike."""
    frequencies = np.random.default_rng(123).normal(scale=1 / 15.0, size=(2, dim // 2))
    phases = positions @ frequencies
    features = np.concatenate([np.cos(phases), np.sin(phases)], axis=1)
    return normalised(features + rng.normal(scale=noise, size=features.shape))


@pytest.fixture(scope="module")
def places():
    """2,000 database images over a 600 m square and 300 queries taken near database images."""
    rng = np.random.default_rng(0)
    database_xy = rng.uniform(0, 600, size=(2000, 2))
    query_xy = database_xy[rng.choice(2000, 300, replace=False)] + rng.normal(scale=15, size=(300, 2))
    return (
        place_descriptors(database_xy, 0.3, rng),
        place_descriptors(query_xy, 0.3, rng),
        database_xy,
        query_xy,
    )


def brute_force_recalls(database_desc, query_desc, database_xy, query_xy, radius):
    top = np.argsort(-(query_desc @ database_desc.T), axis=1, kind="stable")[:, : max(K_VALUES)]
    distances = np.linalg.norm(query_xy[:, None] - database_xy[None], axis=2)
    recalls = {}
    for k in K_VALUES:
        answered = [any(distances[query, row] <= radius for row in top[query, :k]) for query in range(len(top))]
        recalls[k] = sum(answered) / len(top)
    return top, recalls


# --- geo --------------------------------------------------------------------------------------------------------


def test_parse_utm_reads_vpr_benchmark_names():
    name = "@0543256.96@4178906.70@10@S@037.75643@-122.50815@wz7dGcWKmwu0BWXkQdWpBg@@@@@@201311@@.jpg"
    assert parse_utm(f"/data/sf_xl/test/database/{name}") == (543256.96, 4178906.70)
    assert parse_utm("@584116.63@4477129.86@17@T@@@.png") == (584116.63, 4477129.86)
    positions = utm_positions(["@1.5@2.5@10@S@.jpg", "@-3@4e2@10@S@.jpg"])
    np.testing.assert_array_equal(positions, [[1.5, 2.5], [-3.0, 400.0]])
    assert utm_positions([]).shape == (0, 2)


@pytest.mark.parametrize(
    "name",
    [
        "frame_0001.jpg",
        "0543256.96@4178906.70@10@S@.jpg",
        "@east@4178906.70@10@S@.jpg",
        "@1.0@2.0.jpg",
        "@1@nan@10@S@.jpg",
    ],
)
def test_parse_utm_rejects_other_names(name):
    with pytest.raises(ValueError, match=r"@<utm_east>@<utm_north>") as error:
        parse_utm(f"images/{name}")
    assert name in str(error.value)


def test_read_positions_csv(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("b.jpg,10,20.5\na.jpg,-1,2\n")
    np.testing.assert_array_equal(read_positions_csv(plain, ["a.jpg", "b.jpg"]), [[-1, 2], [10, 20.5]])

    with_header = tmp_path / "with_header.csv"
    with_header.write_text("timestamp,y,name,x\n7,5.0,f1,3.0\n8,6.0,f2,4.0\n")
    np.testing.assert_array_equal(read_positions_csv(with_header, ["f2", "f1"]), [[4, 6], [3, 5]])

    with pytest.raises(ValueError, match=r"plain\.csv: no position for 1 of 2 frame\(s\), e\.g\. \['c\.jpg'\]"):
        read_positions_csv(plain, ["a.jpg", "c.jpg"])
    bad_number = tmp_path / "bad.csv"
    bad_number.write_text("name,x,y\na.jpg,1,2\nb.jpg,one,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: x/y of 'b\.jpg' are not numbers"):
        read_positions_csv(bad_number, ["a.jpg"])
    duplicated = tmp_path / "duplicated.csv"
    duplicated.write_text("a.jpg,1,2\na.jpg,1,3\n")
    with pytest.raises(ValueError, match=r"duplicated\.csv:2: frame 'a\.jpg' appears twice"):
        read_positions_csv(duplicated, ["a.jpg"])
    wrong_header = tmp_path / "wrong_header.csv"
    wrong_header.write_text("file,east,north\na.jpg,1,2\n")
    with pytest.raises(ValueError, match=r"wrong_header\.csv:1: header .* lacks column"):
        read_positions_csv(wrong_header, ["a.jpg"])


# --- recall -----------------------------------------------------------------------------------------------------


def test_positives_within_against_brute_force():
    rng = np.random.default_rng(1)
    database_xy, query_xy = rng.uniform(0, 100, size=(500, 2)), rng.uniform(0, 100, size=(80, 2))
    database_xy[7] = query_xy[3] + [6.0, 8.0]  # exactly on the radius: inclusive
    distances = np.linalg.norm(query_xy[:, None] - database_xy[None], axis=2)
    positives = positives_within(database_xy, query_xy, radius=10.0)
    assert len(positives) == 80 and 7 in positives[3]
    for query, rows in enumerate(positives):
        assert rows.dtype == np.int64
        np.testing.assert_array_equal(rows, np.flatnonzero(distances[query] <= 10.0))
    with pytest.raises(ValueError, match="radius"):
        positives_within(database_xy, query_xy, radius=0)


def test_recall_at_k_counts_queries_with_a_positive_in_the_top_k():
    predictions = np.array([[3, 1, 2], [0, 4, 5], [-1, -1, -1], [9, 8, 7]])
    positives = [np.array([1]), np.array([0, 2]), np.array([0]), np.array([], dtype=np.int64)]
    assert is_positive(predictions, positives).tolist() == [
        [False, True, False],
        [True, False, False],
        [False, False, False],
        [False, False, False],
    ]
    assert recall_at_k(predictions, positives, [1, 2, 3]) == {1: 0.25, 2: 0.5, 3: 0.5}
    with pytest.raises(ValueError, match=r"K=4 is outside 1\.\.3"):
        recall_at_k(predictions, positives, [4])


def test_exact_evaluation_matches_brute_force(places):
    database_desc, query_desc, database_xy, query_xy = places
    result = evaluate_retrieval(database_desc, query_desc, database_xy, query_xy, K_VALUES, radius=25.0)
    top, expected_recalls = brute_force_recalls(database_desc, query_desc, database_xy, query_xy, 25.0)
    np.testing.assert_array_equal(result.predictions, top)
    np.testing.assert_allclose(result.scores, np.take_along_axis(query_desc @ database_desc.T, top, 1), atol=1e-5)
    assert result.recalls == pytest.approx(expected_recalls)
    assert 0.9 < result.recalls[1] < result.recalls[20] < 1.0, "the data should be neither trivial nor hopeless"
    assert result.exact_recalls is None and result.recall_loss is None
    summary = result.summary()
    assert summary["R@1"] == result.recalls[1] and summary["queries"] == 300 and summary["index_kind"] == "exact"


@pytest.mark.parametrize(
    ("kind", "params"), [("ivf", {"nprobe": 12}), ("ivf", {"nlist": 16, "nprobe": 16}), ("hnsw", {"ef_search": 64})]
)
def test_approximate_evaluation_reports_recall_loss(places, kind, params):
    database_desc, query_desc, database_xy, query_xy = places
    result = evaluate_retrieval(database_desc, query_desc, database_xy, query_xy, K_VALUES, 25.0, kind, **params)
    _, exact_recalls = brute_force_recalls(database_desc, query_desc, database_xy, query_xy, 25.0)
    assert result.exact_recalls == pytest.approx(exact_recalls)
    assert set(result.recall_loss) == set(K_VALUES)
    for k in K_VALUES:
        assert result.recall_loss[k] == pytest.approx(exact_recalls[k] - result.recalls[k])
        assert abs(result.recall_loss[k]) <= 0.02
    assert result.index["kind"] == kind and result.index["size"] == len(database_desc)
    assert min(result.build_seconds, result.search_seconds, result.exact_search_seconds) >= 0
    summary = result.summary()
    assert {"exact_R@1", "recall_loss@1", "exact_search_seconds", "index_kind"} <= set(summary)
    if params.get("nprobe") == 16:  # every list probed: the search is exhaustive
        assert result.recall_loss == {k: 0.0 for k in K_VALUES}


def test_evaluation_rejects_inconsistent_input(places):
    database_desc, query_desc, database_xy, query_xy = places
    with pytest.raises(ValueError, match="K=20 exceeds the database size 10"):
        evaluate_retrieval(database_desc[:10], query_desc, database_xy[:10], query_xy)
    with pytest.raises(ValueError, match="position counts differ"):
        evaluate_retrieval(database_desc, query_desc, database_xy[:-1], query_xy)
    with pytest.raises(ValueError, match="L2-normalised"):
        evaluate_retrieval(database_desc * 3, query_desc, database_xy, query_xy)


# --- search -----------------------------------------------------------------------------------------------------


def test_search_batches_give_the_same_results(places):
    database_desc, query_desc, _, _ = places
    index = build_index(database_desc)
    scores, rows = search(index, query_desc, k=5)
    batched_scores, batched_rows = search(index, query_desc, k=5, batch_size=7)
    np.testing.assert_array_equal(rows, batched_rows)
    np.testing.assert_allclose(scores, batched_scores, atol=1e-6)
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and rows.shape == (300, 5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_build_index_settings_and_errors(places):
    database_desc = places[0]
    ivf = describe_index(build_index(database_desc, "ivf"))
    assert ivf == {"kind": "ivf", "size": 2000, "nlist": 51, "nprobe": 4}
    hnsw = describe_index(build_index(database_desc[:200], "hnsw", hnsw_m=16, ef_search=40))
    assert hnsw == {"kind": "hnsw", "size": 200, "hnsw_m": 16, "ef_search": 40, "ef_construction": 80}
    with pytest.raises(ValueError, match="at least 39 database vectors"):
        build_index(database_desc[:20], "ivf")
    with pytest.raises(ValueError, match="nlist=100 needs at least 39 \\* nlist = 3900"):
        build_index(database_desc, "ivf", nlist=100)
    with pytest.raises(ValueError, match="Unknown index kind 'lsh'"):
        build_index(database_desc, "lsh")
    with pytest.raises(ValueError, match="non-empty 2-D"):
        build_index(database_desc[0])
    index = build_index(database_desc[:50])
    with pytest.raises(ValueError, match="k must be between 1 and the database size 50"):
        search(index, database_desc[:3], k=51)
    with pytest.raises(ValueError, match="dimension 16 but the index holds dimension 32"):
        search(index, normalised(np.ones((2, 16))), k=1)


# --- files and pictures -----------------------------------------------------------------------------------------


def test_write_predictions_csv(tmp_path):
    predictions = np.array([[2, 0], [1, -1]])
    scores = np.array([[0.9, 0.5], [0.75, -np.inf]], dtype=np.float32)
    positives = [np.array([0]), np.array([1, 2])]
    path = tmp_path / "out" / "predictions.csv"
    write_predictions_csv(path, ["q0.jpg", "q1.jpg"], ["d0.jpg", "d1.jpg", "d2.jpg"], predictions, scores, positives)
    with path.open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows == [
        [
            "query",
            "num_positives",
            "rank1_database",
            "rank1_score",
            "rank1_positive",
            "rank2_database",
            "rank2_score",
            "rank2_positive",
        ],
        ["q0.jpg", "1", "d2.jpg", "0.900000", "0", "d0.jpg", "0.500000", "1"],
        ["q1.jpg", "2", "d1.jpg", "0.750000", "1", "", "", "0"],
    ]
    assert [file.name for file in path.parent.iterdir()] == ["predictions.csv"]
    with pytest.raises(ValueError, match="database row 2 but there are 2 paths"):
        write_predictions_csv(path, ["q0.jpg", "q1.jpg"], ["d0.jpg", "d1.jpg"], predictions, scores, positives)


def solid_image(path, colour, size):
    Image.new("RGB", size, colour).save(path)
    return path


def test_query_grids_show_results_with_coloured_borders(tmp_path):
    query_colours = [(255, 255, 0), (0, 255, 255), (255, 0, 255)]
    database_colours = [(10, 10, 10), (60, 60, 60), (110, 110, 110), (160, 160, 160), (210, 210, 210)]
    queries = [solid_image(tmp_path / f"q{i}.png", colour, (64, 48)) for i, colour in enumerate(query_colours)]
    database = [solid_image(tmp_path / f"d{i}.jpg", colour, (30, 90)) for i, colour in enumerate(database_colours)]
    predictions = np.array([[1, 0, 2, 3], [4, 3, -1, -1], [0, 1, 2, 3]])
    positives = [np.array([1]), np.array([3]), np.array([2])]
    out_dir = tmp_path / "grids"
    written = save_query_grids(out_dir, queries, database, predictions, positives, k=3, scores=np.ones((3, 4)))
    assert written == [out_dir / f"query_0000{query}.png" for query in range(3)]

    expected_borders = [
        [POSITIVE_COLOUR, NEGATIVE_COLOUR, NEGATIVE_COLOUR],
        [NEGATIVE_COLOUR, POSITIVE_COLOUR, MISSING_COLOUR],
        [NEGATIVE_COLOUR, NEGATIVE_COLOUR, POSITIVE_COLOUR],
    ]
    for query, png in enumerate(written):
        with Image.open(png) as grid:
            assert grid.format == "PNG" and grid.size == grid_size(3)
            pixels = grid.convert("RGB")
        left, top = tile_origin(0)
        assert pixels.getpixel((left + 2, top + 2)) == QUERY_COLOUR
        assert pixels.getpixel((left + TILE_SIZE // 2, top + TILE_SIZE // 2)) == query_colours[query]
        for rank, border in enumerate(expected_borders[query], start=1):
            left, top = tile_origin(rank)
            assert pixels.getpixel((left + 2, top + TILE_SIZE - 3)) == border
            row = predictions[query, rank - 1]
            if row >= 0:
                centre = pixels.getpixel((left + TILE_SIZE // 2, top + TILE_SIZE // 2))
                assert np.abs(np.subtract(centre, database_colours[row])).max() <= 3  # JPEG rounding
        lines = png.with_suffix(".txt").read_text().splitlines()
        assert lines[0] == f"query\t{queries[query]}" and len(lines) == 5
        assert lines[2].startswith("1\t") and lines[2].endswith(str(database[predictions[query, 0]]))

    wrong = save_query_grids(tmp_path / "wrong", queries, database, predictions, positives, only_wrong=True, k=2)
    assert [path.name for path in wrong] == ["query_00001.png", "query_00002.png"]
    spread = save_query_grids(tmp_path / "spread", queries, database, predictions, positives, num_queries=2, k=1)
    assert [path.name for path in spread] == ["query_00000.png", "query_00002.png"]
    with pytest.raises(ValueError, match="k must be between 1 and 4"):
        save_query_grids(tmp_path / "bad", queries, database, predictions, positives, k=5)


def test_plot_recall_at_k_writes_a_png(tmp_path):
    path = tmp_path / "recall.png"
    plot_recall_at_k({1: 0.5, 5: 0.75, 10: 0.8}, path, exact_recalls={1: 0.55, 5: 0.76, 10: 0.8})
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300
    with pytest.raises(ValueError, match="empty"):
        plot_recall_at_k({}, tmp_path / "empty.png")
