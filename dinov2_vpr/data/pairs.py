"""Pair lists: read, check, split and write `query, reference[, label]` lists of image pairs.

A pair list is a text file with one pair a line, paths relative to the dataset root::

    Autumn_mini_query/1418133788799845.jpg, Night_mini_ref/1418756794975225.jpg, 1

Labelled lists have a third column (1: same place, a true loop closure; 0: not); unlabelled
lists (the final test lists, ``*_val_final.txt``) have only the two paths.
"""

import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dinov2.utils.errors import InputError, InputFileNotFoundError
from dinov2_vpr.data.problems import ProblemListError, image_problem
from dinov2_vpr.io import atomic_write_text

logger = logging.getLogger("dinov2")

LABELS = ("0", "1")


@dataclass(frozen=True)
class Pair:
    """One line of a pair list.

    Attributes:
        query: query image path as written, relative to the dataset root.
        reference: reference image path as written, relative to the dataset root.
        label: 1 (same place) or 0 (different places); None in an unlabelled list.
        source: the pair list file the pair was read from.
        line: 1-based line number in ``source``.
    """

    query: str
    reference: str
    label: int | None
    source: str
    line: int


class PairListError(ProblemListError):
    """Invalid pair list lines or images; ``problems`` holds one ``file:line: what is wrong`` each."""

    subject = "the pair lists"
    remedy = "Fix these lines or images, or set vpr.data.skip_invalid=true to skip the invalid pairs."


def find_pair_lists(root: str | Path) -> list[Path]:
    """Every ``.txt`` file directly in ``root`` (not in sub-folders), sorted by name.

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no ``.txt`` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f"Pair list folder {root} does not exist or is not a folder")
    lists = sorted(path for path in root.iterdir() if path.is_file() and path.suffix.lower() == ".txt")
    if not lists:
        raise InputFileNotFoundError(
            f"No pair lists (.txt files) directly in {root}; put lists with one "
            "'query, reference[, label]' a line there"
        )
    return lists


def _parse_line(text: str) -> tuple[str, str, int | None]:
    """``(query, reference, label)`` from one non-blank line; ValueError says what is wrong."""
    columns = [column.strip() for column in text.split(",")]
    if len(columns) not in (2, 3):
        raise ValueError(
            "expected 2 columns (query, reference) or 3 (query, reference, label) separated by "
            f"commas, got {len(columns)}: {text.strip()!r}"
        )
    query, reference = columns[0], columns[1]
    if not query or not reference:
        raise ValueError(f"empty {'query' if not query else 'reference'} path: {text.strip()!r}")
    if len(columns) == 2:
        return query, reference, None
    if columns[2] not in LABELS:
        raise ValueError(f"label must be 0 or 1, got {columns[2]!r}")
    return query, reference, int(columns[2])


def _odd_kind_problems(pairs: list[Pair]) -> list[tuple[int, str]]:
    """Problems for the lines whose column count differs from most lines of the list."""
    labelled = sum(pair.label is not None for pair in pairs)
    if labelled in (0, len(pairs)):
        return []
    # Majority decides; on a tie the first line does.
    is_labelled = labelled * 2 > len(pairs) or (labelled * 2 == len(pairs) and pairs[0].label is not None)
    kind, count = ("labelled", labelled) if is_labelled else ("unlabelled", len(pairs) - labelled)
    return [
        (
            pair.line,
            f"has {2 if is_labelled else 3} columns but the list is {kind} "
            f"({count} lines have {3 if is_labelled else 2} columns)",
        )
        for pair in pairs
        if (pair.label is not None) != is_labelled
    ]


def _read_list(path: Path) -> tuple[list[Pair], list[tuple[int, str]]]:
    """The valid pairs of one list and its problems as ``(line, what is wrong)`` in line order."""
    if not path.is_file():
        raise InputFileNotFoundError(f"Pair list {path} does not exist")
    source = str(path)
    pairs: list[Pair] = []
    issues: list[tuple[int, str]] = []
    for line, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as error:
            issues.append((line, f"not UTF-8 text ({error.reason} at byte {error.start})"))
            continue
        if not text.strip():
            continue
        try:
            query, reference, label = _parse_line(text)
        except ValueError as error:
            issues.append((line, str(error)))
            continue
        pairs.append(Pair(query, reference, label, source, line))
    if not pairs and not issues:
        issues.append((1, "the list holds no pairs"))
    odd = _odd_kind_problems(pairs)
    if odd:
        odd_lines = {line for line, _ in odd}
        pairs = [pair for pair in pairs if pair.line not in odd_lines]
        issues = sorted(issues + odd)
    return pairs, issues


def parse_pair_list(path: str | Path) -> tuple[list[Pair], list[str]]:
    """Read one pair list without looking at the images.

    Columns are separated by commas with optional spaces; ``\\r\\n`` line endings and blank lines
    are accepted. A list is labelled (3 columns) or unlabelled (2 columns) as most of its lines
    are; lines of the other kind are problems.

    Returns:
        The valid pairs in file order, and the problems as ``file:line: what is wrong`` in line order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    pairs, issues = _read_list(path)
    return pairs, [f"{path}:{line}: {what}" for line, what in issues]


def _outside_root_problem(name: str, image_root: Path) -> str | None:
    """Why the list path ``name`` leaves ``image_root`` (absolute, or ``..`` above it), or None."""
    if Path(name).is_absolute():
        return f"path {name} is absolute; paths must be relative to the dataset root {image_root}"
    if os.path.normpath(name).split(os.sep)[0] == os.pardir:
        return f"path {name} leads outside the dataset root {image_root}"
    return None


def read_pair_lists(
    paths: Iterable[str | Path],
    image_root: str | Path,
    skip_invalid: bool = False,
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> tuple[list[Pair], list[str]]:
    """Read pair lists and check that every image they name exists and can be opened.

    All lists are read and every distinct image is checked once before deciding, so one error
    names every problem.

    Args:
        paths: pair list files.
        image_root: the dataset root the image paths are relative to.
        skip_invalid: drop invalid lines and pairs with bad images (with a warning) instead of raising.
        check_images: check the images (existence, PIL can open them and read their size).
        allow_outside_root: accept absolute paths and paths with ``..`` that leave ``image_root``
            (otherwise each is a problem of its line, unless ``vpr.data.allow_outside_root=true``).

    Returns:
        The valid pairs (in list and line order) and the problems found (empty if none).

    Raises:
        PairListError: there are problems and ``skip_invalid`` is false.
        InputError: ``skip_invalid`` is true but no valid pair is left.
    """
    paths = [Path(path) for path in paths]
    if not paths:
        raise InputError("No pair lists given")
    image_root = Path(image_root)
    pairs: list[Pair] = []
    issues: list[tuple[int, int, str]] = []  # (list index, line, what is wrong), to sort by file and line
    for list_index, path in enumerate(paths):
        list_pairs, list_issues = _read_list(path)
        pairs += list_pairs
        issues += [(list_index, line, what) for line, what in list_issues]
    if check_images or not allow_outside_root:
        list_indices = {str(path): list_index for list_index, path in enumerate(paths)}
        distinct = dict.fromkeys(name for pair in pairs for name in (pair.query, pair.reference))
        image_problems = {
            name: (None if allow_outside_root else _outside_root_problem(name, image_root))
            or (image_problem(image_root / name) if check_images else None)
            for name in distinct
        }
        kept = []
        for pair in pairs:
            pair_issues = [
                (list_indices[pair.source], pair.line, f"{role} image {image_problems[name]}")
                for role, name in (("query", pair.query), ("reference", pair.reference))
                if image_problems[name] is not None
            ]
            issues += pair_issues
            if not pair_issues:
                kept.append(pair)
        pairs = kept
    problems = [f"{paths[list_index]}:{line}: {what}" for list_index, line, what in sorted(issues)]
    if problems and not skip_invalid:
        raise PairListError(problems)
    if problems:
        logger.warning(
            "Skipping invalid pair list lines (vpr.data.skip_invalid=true): %d problem(s), "
            "%d valid pair(s) kept; first: %s",
            len(problems),
            len(pairs),
            problems[0],
        )
    if not pairs:
        raise InputError(
            f"No valid pairs left in {', '.join(map(str, paths))} after skipping {len(problems)} "
            f"problem(s); first: {problems[0]}"
        )
    return pairs, problems


def split_by_query(pairs: Sequence[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Split pairs into train and validation parts so that no query image is in both.

    Query images are shuffled by ``seed`` and given to validation until it holds about
    ``val_fraction`` of the pairs. The result depends only on the pairs and the seed.

    Returns:
        ``(train, val)``, both non-empty and each in input order.

    Raises:
        InputError: ``val_fraction`` is not in (0, 1), or there are fewer than two query images.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    queries: dict[str, int] = {}
    for pair in pairs:
        queries[pair.query] = queries.get(pair.query, 0) + 1
    if len(queries) < 2:
        raise InputError(
            f"Cannot split {len(pairs)} pair(s) by query image: need at least 2 distinct query "
            f"images, got {len(queries)}; add pairs or disable the validation split"
        )
    order = sorted(queries)
    random.Random(seed).shuffle(order)
    target = val_fraction * len(pairs)
    val_queries: set[str] = set()
    val_count = 0
    for query in order:
        # Take the query while that brings the count closer to the target (always take the first).
        if val_queries and abs(val_count + queries[query] - target) >= abs(val_count - target):
            break
        val_queries.add(query)
        val_count += queries[query]
    if len(val_queries) == len(queries):
        val_queries.discard(order[-1])
    train = [pair for pair in pairs if pair.query not in val_queries]
    val = [pair for pair in pairs if pair.query in val_queries]
    return train, val


def _binary(value: object, what: str) -> int:
    """``value`` as 0 or 1; accepts booleans and integers (numpy ones too), rejects the rest."""
    if isinstance(value, (str, bytes, float)) or value not in (0, 1):
        raise ValueError(f"{what} must be a boolean or 0/1, got {value!r}")
    return 1 if value else 0


def _pair_fields(item: Pair | Sequence, index: int) -> list[str]:
    """The columns of one pair list line from a Pair or a (query, reference[, label]) tuple."""
    if isinstance(item, Pair):
        fields = [item.query, item.reference] + ([] if item.label is None else [item.label])
    else:
        fields = list(item)
    if len(fields) not in (2, 3):
        raise ValueError(f"Pair {index}: expected (query, reference) or (query, reference, label), got {item!r}")
    for name in fields[:2]:
        if not isinstance(name, str) or not name.strip() or any(char in name for char in ",\r\n"):
            raise ValueError(
                f"Pair {index}: image path must be a non-empty string without commas or newlines, got {name!r}"
            )
    if len(fields) == 3:
        fields[2] = str(_binary(fields[2], f"Pair {index}: label"))
    return [field.strip() for field in fields]


def write_pair_list(path: str | Path, pairs: Iterable[Pair | Sequence]) -> None:
    """Write pairs atomically in the pair list format (``q, r, label`` or ``q, r`` lines).

    Args:
        path: the list file.
        pairs: Pair objects or ``(query, reference)`` / ``(query, reference, label)`` tuples;
            all labelled or all unlabelled, so that the list can be read back.
    """
    rows = [_pair_fields(item, index) for index, item in enumerate(pairs)]
    if not rows:
        raise ValueError(f"No pairs to write to {path}")
    if len({len(row) for row in rows}) > 1:
        raise ValueError(f"Pairs for {path} mix labelled and unlabelled pairs; write them to separate lists")
    atomic_write_text(path, "".join(", ".join(row) + "\n" for row in rows))


def write_result_file(path: str | Path, decisions: Iterable) -> None:
    """Write loop-closure decisions atomically, one ``1`` or ``0`` a line in input order.

    Args:
        path: the result file.
        decisions: booleans or 0/1 integers (numpy values too), one per pair of the list.
    """
    lines = [str(_binary(decision, f"Decision {index}")) for index, decision in enumerate(decisions)]
    if not lines:
        raise ValueError(f"No decisions to write to {path}")
    atomic_write_text(path, "".join(line + "\n" for line in lines))
