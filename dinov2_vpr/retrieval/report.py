"""Files and table of a retrieval evaluation: predictions CSV, Recall@K plot, query pictures."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dinov2_vpr.retrieval.pictures import plot_recall_at_k, save_query_grids
from dinov2_vpr.retrieval.recall import RetrievalResult, write_predictions_csv

PREDICTIONS_FILE = "predictions.csv"
RECALL_PLOT_FILE = "recall_at_k.png"
PICTURES_FOLDER = "preds"


def write_retrieval_files(
    result: RetrievalResult,
    query_paths: Sequence[str | Path],
    database_paths: Sequence[str | Path],
    output_dir: str | Path,
    preds_per_picture: int = 0,
    num_pictures: int | None = None,
    only_wrong: bool = False,
    attention: Mapping[int, np.ndarray] | None = None,
) -> dict[str, str | int]:
    """Write ``predictions.csv``, ``recall_at_k.png`` and, with ``preds_per_picture > 0``, query pictures in ``preds/``.

    Args:
        result: from :func:`dinov2_vpr.retrieval.recall.evaluate_retrieval`.
        query_paths, database_paths: the images, in the order of the descriptors.
        output_dir: where the files go.
        preds_per_picture: top results shown per query picture (0: no pictures).
        num_pictures: how many queries get a picture, spread evenly; None: all.
        only_wrong: pictures only of queries whose top-1 result is wrong.
        attention: per query row, an ``(h, w)`` heat map overlaid on the query in its picture.

    Returns:
        The file names (relative to ``output_dir``) and the number of pictures written.
    """
    output_dir = Path(output_dir)
    write_predictions_csv(
        output_dir / PREDICTIONS_FILE, query_paths, database_paths, result.predictions, result.scores, result.positives
    )
    plot_recall_at_k(result.recalls, output_dir / RECALL_PLOT_FILE, result.exact_recalls)
    files: dict[str, str | int] = {"predictions": PREDICTIONS_FILE, "recall_plot": RECALL_PLOT_FILE, "pictures": 0}
    if preds_per_picture > 0:
        written = save_query_grids(
            output_dir / PICTURES_FOLDER,
            query_paths,
            database_paths,
            result.predictions,
            result.positives,
            num_queries=num_pictures,
            only_wrong=only_wrong,
            k=preds_per_picture,
            scores=result.scores,
            attention=attention,
        )
        files.update(pictures=len(written), pictures_folder=PICTURES_FOLDER)
    return files


def _index_name(index: dict[str, int | str]) -> str:
    settings = ", ".join(f"{key} {value}" for key, value in index.items() if key not in ("kind", "size"))
    return f"{index['kind']} ({settings})" if settings else str(index["kind"])


def _compression_name(compression: dict[str, int | bool | None]) -> str:
    parts = [f"{compression['descriptor_dim']}-d"]
    if compression["pca_dim"] is not None:
        parts.append(f"PCA {compression['pca_dim']}{' whitened' if compression['pca_whiten'] else ''}")
    if compression["float16"]:
        parts.append("float16")
    return " -> ".join(parts)


def format_recall_table(result: RetrievalResult, radius: float) -> str:
    """Recall@K in percent as a plain-text table; for an approximate index also exact search and the loss,
    for compressed descriptors (PCA, float16) also the full descriptors' recall and the loss against it."""
    approximate = result.exact_recalls is not None and result.recall_loss is not None
    compressed = result.full_recalls is not None and result.full_recall_loss is not None
    header = ["K", "R@K (%)"] + (["exact R@K (%)", "loss (points)"] if approximate else [])
    header += ["full R@K (%)", "loss vs full (points)"] if compressed else []
    rows = [header]
    for k, recall in result.recalls.items():
        row = [str(k), f"{100 * recall:.2f}"]
        if approximate:
            row += [f"{100 * result.exact_recalls[k]:.2f}", f"{100 * result.recall_loss[k]:.2f}"]
        if compressed:
            row += [f"{100 * result.full_recalls[k]:.2f}", f"{100 * result.full_recall_loss[k]:.2f}"]
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    timing = f"build {result.build_seconds:.3f} s, search {result.search_seconds:.3f} s"
    if approximate:
        timing += f" (exact: build {result.exact_build_seconds:.3f} s, search {result.exact_search_seconds:.3f} s)"
    if compressed:
        timing += f" (full: build {result.full_build_seconds:.3f} s, search {result.full_search_seconds:.3f} s)"
    descriptors = f"descriptors {_compression_name(result.compression)}; " if result.compression else ""
    title = (
        f"{len(result.positives)} queries, {result.index['size']} database images, positives within {radius:g} m; "
        f"{descriptors}index {_index_name(result.index)}; {timing}"
    )
    return "\n".join([title, *lines])
