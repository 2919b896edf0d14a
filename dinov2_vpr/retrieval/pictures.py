"""Pictures of retrieval results: per-query grids of the top-K database images, and a Recall@K plot."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageOps

from dinov2_vpr.io import atomic_write, atomic_write_text
from dinov2_vpr.retrieval.recall import is_positive

TILE_SIZE = 224
BORDER_WIDTH = 8
GAP = 10
CAPTION_HEIGHT = 24
QUERY_COLOUR = (40, 90, 220)
POSITIVE_COLOUR = (0, 170, 0)
NEGATIVE_COLOUR = (220, 30, 30)
MISSING_COLOUR = (150, 150, 150)
_BACKGROUND = (255, 255, 255)
_TILE_BACKGROUND = (30, 30, 30)
ATTENTION_ALPHA = 0.5


def tile_origin(column: int) -> tuple[int, int]:
    """Top-left pixel of the tile in ``column`` of a query grid (0: the query, r: the rank-r result)."""
    return GAP + column * (TILE_SIZE + GAP), CAPTION_HEIGHT


def grid_size(k: int) -> tuple[int, int]:
    """(width, height) in pixels of a query grid showing ``k`` results."""
    return GAP + (k + 1) * (TILE_SIZE + GAP), CAPTION_HEIGHT + TILE_SIZE + GAP


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, alpha: float = ATTENTION_ALPHA) -> Image.Image:
    """``image`` blended with a ``(h, w)`` heat map (scaled to [0, 1], stretched over the whole image, jet colours).

    The map is stretched to the image's size, as the models' preprocessing stretches the image to the grid.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or not np.isfinite(heatmap).all():
        raise ValueError(f"heatmap must be a finite 2-D (h, w) array; got shape {heatmap.shape}")
    low, high = float(heatmap.min()), float(heatmap.max())
    scaled = (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)
    resized = np.asarray(Image.fromarray(scaled, mode="F").resize(image.size, Image.Resampling.BILINEAR))
    colours = (colormaps["jet"](np.clip(resized, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)
    return Image.blend(image.convert("RGB"), Image.fromarray(colours, mode="RGB"), alpha)


def _tile(
    image_path: str | Path | None, colour: tuple[int, int, int], heatmap: np.ndarray | None = None
) -> Image.Image:
    """A TILE_SIZE square: a ``colour`` border around the image fitted inside (empty when no path),
    with ``heatmap`` overlaid if given."""
    tile = Image.new("RGB", (TILE_SIZE, TILE_SIZE), colour)
    inner = TILE_SIZE - 2 * BORDER_WIDTH
    tile.paste(_TILE_BACKGROUND, (BORDER_WIDTH, BORDER_WIDTH, BORDER_WIDTH + inner, BORDER_WIDTH + inner))
    if image_path is not None:
        with Image.open(image_path) as image:
            picture = ImageOps.exif_transpose(image).convert("RGB")
        if heatmap is not None:
            picture = overlay_heatmap(picture, heatmap)
        picture = ImageOps.contain(picture, (inner, inner))
        left = BORDER_WIDTH + (inner - picture.width) // 2
        top = BORDER_WIDTH + (inner - picture.height) // 2
        tile.paste(picture, (left, top))
    return tile


def picture_queries(
    predictions: np.ndarray, positives: Sequence[np.ndarray], num_queries: int | None = None, only_wrong: bool = False
) -> np.ndarray:
    """The query rows that get a picture, in order (see :func:`save_query_grids`)."""
    hits = is_positive(predictions, positives)
    candidates = np.flatnonzero(~hits[:, 0]) if only_wrong else np.arange(len(hits))
    if num_queries is None or num_queries >= len(candidates):
        return candidates
    if num_queries < 1:
        raise ValueError(f"num_queries must be at least 1 (or None for all); got {num_queries}")
    return candidates[np.unique(np.linspace(0, len(candidates) - 1, num_queries).round().astype(int))]


def save_query_grids(
    out_dir: str | Path,
    query_paths: Sequence[str | Path],
    database_paths: Sequence[str | Path],
    predictions: np.ndarray,
    positives: Sequence[np.ndarray],
    num_queries: int | None = None,
    only_wrong: bool = False,
    k: int = 5,
    *,
    scores: np.ndarray | None = None,
    attention: Mapping[int, np.ndarray] | None = None,
) -> list[Path]:
    """Save, for each chosen query, a PNG with the query and its top-``k`` results, and a .txt of paths.

    The query has a blue border; each result a green (positive) or red (negative) one, grey when the
    index returned no result for that rank. Files are ``query_<index>.png`` / ``.txt`` in ``out_dir``.

    Args:
        out_dir: folder for the pictures (created).
        query_paths: image path of each query.
        database_paths: image path of each database row.
        predictions: ``(Q, maxK)`` database rows, best first.
        positives: per query, the database rows that count as correct.
        num_queries: how many queries to draw, spread evenly over the chosen ones; None: all.
        only_wrong: choose only queries whose top-1 result is not a positive.
        k: results per query (at most ``maxK``).
        scores: optional ``(Q, maxK)`` similarities, shown in the captions.
        attention: optional ``(h, w)`` heat maps by query row, overlaid on those queries' images.

    Returns:
        The PNG paths written.
    """
    hits = is_positive(predictions, positives)
    if len(query_paths) != len(predictions):
        raise ValueError(f"{len(query_paths)} query paths for {len(predictions)} rows of predictions")
    if not 1 <= k <= predictions.shape[1]:
        raise ValueError(f"k must be between 1 and {predictions.shape[1]} (predictions per query); got {k}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name_width = max(5, len(str(len(query_paths) - 1)))
    written = []
    attention = attention or {}
    for query in picture_queries(predictions, positives, num_queries, only_wrong):
        canvas = Image.new("RGB", grid_size(k), _BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        heatmap = attention.get(int(query))
        canvas.paste(_tile(query_paths[query], QUERY_COLOUR, heatmap), tile_origin(0))
        draw.text((tile_origin(0)[0], 6), "query" if heatmap is None else "query + attention", fill=(0, 0, 0))
        lines = [f"query\t{query_paths[query]}", "rank\tpositive\tscore\tdatabase"]
        for rank in range(1, k + 1):
            row = int(predictions[query, rank - 1])
            hit = bool(hits[query, rank - 1])
            colour = MISSING_COLOUR if row < 0 else POSITIVE_COLOUR if hit else NEGATIVE_COLOUR
            canvas.paste(_tile(database_paths[row] if row >= 0 else None, colour), tile_origin(rank))
            score = "" if scores is None or row < 0 else f"{scores[query, rank - 1]:.3f}"
            draw.text((tile_origin(rank)[0], 6), f"#{rank} {score}", fill=(0, 0, 0))
            path = database_paths[row] if row >= 0 else ""
            lines.append(f"{rank}\t{'yes' if hit else 'no'}\t{score}\t{path}")
        png_path = out_dir / f"query_{query:0{name_width}d}.png"
        with atomic_write(png_path, "wb") as file:
            canvas.save(file, format="PNG")
        atomic_write_text(png_path.with_suffix(".txt"), "\n".join(lines) + "\n")
        written.append(png_path)
    return written


def plot_recall_at_k(
    recalls: dict[int, float],
    path: str | Path,
    exact_recalls: dict[int, float] | None = None,
    title: str = "Recall@K",
) -> None:
    """Line plot of Recall@K in percent (recalls are fractions), with the exact search's beside it if given."""
    if not recalls:
        raise ValueError("recalls is empty; nothing to plot")
    figure = Figure(figsize=(5, 4), layout="constrained")
    axes = figure.add_subplot()
    curves = [("index" if exact_recalls else "recall", recalls, "-")]
    if exact_recalls:
        curves.append(("exact search", exact_recalls, "--"))
    for label, values, style in curves:
        ks = sorted(values)
        percents = [100 * values[k] for k in ks]
        axes.plot(ks, percents, style, marker="o", label=label)
        for k, percent in zip(ks, percents, strict=True):
            axes.annotate(f"{percent:.1f}", (k, percent), textcoords="offset points", xytext=(0, 6), ha="center")
    axes.set_xticks(sorted(recalls))
    axes.set_ylim(0, 105)
    axes.set_xlabel("K")
    axes.set_ylabel("Recall@K (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if exact_recalls:
        axes.legend()
    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png", dpi=120)
