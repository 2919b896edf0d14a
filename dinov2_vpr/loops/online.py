"""Loop closures frame by frame, as a running SLAM system asks for them.

>>> detector = OnlineLoopDetector(threshold=0.8, exclude_recent=50, top_k=3, index="hnsw", model=model)
>>> for frame_id, image in keyframes:
...     for candidate in detector.add(frame_id, image=image):
...         verify_and_add_loop_edge(candidate.query, candidate.match)
>>> detector.save("map/loops.npz")  # later: OnlineLoopDetector.load("map/loops.npz", model=model)

Frame ``i`` (the ``i``-th frame added) may match frame ``j`` when ``j < i - exclude_recent``, as in
:func:`dinov2_vpr.loops.sequence.find_loop_candidates`; with the exact index, feeding a sequence
frame by frame gives that function's candidates. A frame enters the search index only once it is
eligible, so each ``add`` is one search and at most one insertion. Memory holds the descriptors,
their positions and the index: no similarity matrix.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dinov2.utils.errors import InputError
from dinov2_vpr.io import atomic_write
from dinov2_vpr.loops.index import GrowingIndex, IndexSettings
from dinov2_vpr.loops.sequence import FrameId, LoopCandidate
from dinov2_vpr.retrieval.search import as_descriptors

DESCRIPTOR_DTYPES = {"float32": np.float32, "float16": np.float16}
STATE_VERSION = 1
# Results asked of the index at first when every match above the threshold is wanted (doubled as needed).
_FIRST_K = 32


class ImageDescriber(Protocol):
    """Anything that turns images into ``(N, D)`` unit descriptors (e.g. :class:`dinov2_vpr.models.descriptor.PlaceDescriptor`)."""

    def describe(self, images: Sequence[Any]) -> Any: ...


class OnlineLoopDetector:
    """Loop-closure candidates of each new frame among the earlier frames of a growing map.

    Args:
        threshold: lowest cosine similarity of a candidate.
        exclude_recent: how many frames just before each frame are not loop matches.
        top_k: at most this many candidates per frame (the most similar); None: all.
        index: ``"exact"``, ``"hnsw"``, ``"ivf"``, or :class:`IndexSettings` with their parameters.
        model: describes the images given to :meth:`add` (needed only for images).
        descriptor_dtype: ``"float32"``, or ``"float16"`` to halve the descriptors kept in memory
            and in saved states (the index keeps float32).

    Raises:
        InputError: a setting out of range.
    """

    def __init__(
        self,
        threshold: float,
        exclude_recent: int,
        top_k: int | None = None,
        index: str | IndexSettings = "exact",
        model: ImageDescriber | None = None,
        descriptor_dtype: str = "float32",
    ) -> None:
        if exclude_recent < 0:
            raise InputError(f"exclude_recent must be 0 or more; got {exclude_recent}")
        if top_k is not None and top_k < 1:
            raise InputError(f"top_k must be at least 1 (or None for all); got {top_k}")
        if descriptor_dtype not in DESCRIPTOR_DTYPES:
            raise InputError(f"descriptor_dtype must be one of {sorted(DESCRIPTOR_DTYPES)}; got {descriptor_dtype!r}")
        self.threshold = float(threshold)
        self.exclude_recent = int(exclude_recent)
        self.top_k = top_k
        self.descriptor_dtype = descriptor_dtype
        self.model = model
        self.metadata: dict = {}  # JSON-serialisable entries saved with the state (the streaming command's progress)
        self._index = GrowingIndex(IndexSettings(kind=index) if isinstance(index, str) else index)
        self._ids: list[FrameId] = []
        self._rows: dict[FrameId, int] = {}
        self._descriptors = np.zeros((0, 0), DESCRIPTOR_DTYPES[descriptor_dtype])
        self._positions = np.zeros((0, 2), np.float64)

    @property
    def index_settings(self) -> IndexSettings:
        return self._index.settings

    @property
    def dim(self) -> int | None:
        """Descriptor width (None until the first frame)."""
        return self._descriptors.shape[1] if self._ids else None

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, frame_id: object) -> bool:
        return frame_id in self._rows

    @property
    def frame_ids(self) -> list[FrameId]:
        """The frames in the order they were added."""
        return list(self._ids)

    @property
    def descriptors(self) -> np.ndarray:
        """``(len(self), D)`` descriptors in the order added (a read-only view)."""
        view = self._descriptors[: len(self._ids)]
        view.flags.writeable = False
        return view

    def position(self, frame_id: FrameId) -> tuple[float, float] | None:
        """The position given with a frame, or None."""
        x, y = self._positions[self._rows[frame_id]]
        return None if np.isnan(x) else (float(x), float(y))

    def describe_index(self) -> dict:
        """The index settings and what is searched now (kind and size)."""
        return self._index.describe()

    def add(
        self,
        frame_id: FrameId,
        descriptor: np.ndarray | None = None,
        image: Any = None,
        position: tuple[float, float] | None = None,
    ) -> list[LoopCandidate]:
        """Add the next frame; return its loop candidates among the earlier frames.

        Args:
            frame_id: a new id (int or str) for the frame.
            descriptor: its ``(D,)`` unit descriptor; or
            image: an image that the detector's model describes.
            position: optional (x, y), kept with the frame (see :meth:`position`).

        Returns:
            Candidates ``(frame_id, match_id, similarity)``, most similar first (earlier match on ties).

        Raises:
            InputError: a duplicate frame id, or a descriptor of the wrong dimension or not unit length.
        """
        vector = self._vector(frame_id, descriptor, image)
        self._check_new_ids([frame_id])
        self._index_eligible(len(self._ids))
        candidates = self._search(frame_id, vector)
        self._append([frame_id], vector[None], None if position is None else np.asarray([position]))
        return candidates

    def extend(
        self, frame_ids: Sequence[FrameId], descriptors: np.ndarray, positions: np.ndarray | None = None
    ) -> None:
        """Add frames without searching them (a map built elsewhere, or a prior run's frames).

        Raises:
            InputError: duplicate or existing ids, counts that differ, or descriptors that do not fit.
        """
        if len(frame_ids) == 0:
            return
        self._check_new_ids(frame_ids)
        vectors = self._as_vectors(descriptors, f"descriptors of frames {frame_ids[0]!r}...{frame_ids[-1]!r}")
        if len(vectors) != len(frame_ids) or (positions is not None and len(positions) != len(frame_ids)):
            raise InputError(f"{len(frame_ids)} frame ids for {len(vectors)} descriptors and positions")
        self._append(frame_ids, vectors, positions)
        self._index_eligible(len(self._ids) - 1)

    def _vector(self, frame_id: FrameId, descriptor: np.ndarray | None, image: Any) -> np.ndarray:
        if (descriptor is None) == (image is None):
            raise ValueError(f"frame {frame_id!r}: give either a descriptor or an image")
        if image is not None:
            if self.model is None:
                raise ValueError(f"frame {frame_id!r}: describing an image needs the detector's model")
            descriptor = np.asarray(self.model.describe([image]), dtype=np.float32)
        vector = np.asarray(descriptor, dtype=np.float32)
        if vector.ndim == 2 and len(vector) == 1:
            vector = vector[0]
        if vector.ndim != 1:
            raise InputError(f"frame {frame_id!r}: expected one (D,) descriptor; got shape {vector.shape}")
        return self._as_vectors(vector[None], f"descriptor of frame {frame_id!r}")[0]

    def _as_vectors(self, descriptors: np.ndarray, name: str) -> np.ndarray:
        try:
            vectors = as_descriptors(descriptors, name)
        except ValueError as error:
            raise InputError(str(error)) from None
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise InputError(f"{name} has dimension {vectors.shape[1]}; the map's descriptors have {self.dim}")
        return vectors

    def _check_new_ids(self, frame_ids: Sequence[FrameId]) -> None:
        for frame_id in frame_ids:
            if not isinstance(frame_id, (int, str)) or isinstance(frame_id, bool):
                raise TypeError(f"frame ids are ints or strings; got {frame_id!r}")
        seen: set[FrameId] = set()
        for frame_id in frame_ids:
            if frame_id in self._rows:
                raise InputError(
                    f"frame id {frame_id!r} is already in the map (frame {self._rows[frame_id]}); ids must be new"
                )
            if frame_id in seen:
                raise InputError(f"frame id {frame_id!r} appears twice among the frames added")
            seen.add(frame_id)

    def _append(self, frame_ids: Sequence[FrameId], vectors: np.ndarray, positions: np.ndarray | None) -> None:
        start, stop = len(self._ids), len(self._ids) + len(frame_ids)
        if stop > len(self._descriptors):
            capacity = max(stop, len(self._descriptors) * 5 // 4, 1024)
            grown = np.zeros((capacity, vectors.shape[1]), self._descriptors.dtype)
            if start:
                grown[:start] = self._descriptors[:start]
            grown_positions = np.full((capacity, 2), np.nan)
            grown_positions[:start] = self._positions[:start]
            self._descriptors, self._positions = grown, grown_positions
        self._descriptors[start:stop] = vectors
        if positions is not None:
            self._positions[start:stop] = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        self._rows.update((frame_id, start + offset) for offset, frame_id in enumerate(frame_ids))
        self._ids.extend(frame_ids)

    def _index_eligible(self, frame: int) -> None:
        """Insert every frame that frame number ``frame`` may match (``j < frame - exclude_recent``)."""
        eligible = frame - self.exclude_recent
        if eligible > self._index.size:
            self._index.add(self._descriptors[self._index.size : eligible])

    def _search(self, frame_id: FrameId, vector: np.ndarray) -> list[LoopCandidate]:
        size = self._index.size
        if size == 0:
            return []
        top_k = self.top_k
        # One more than needed, so that ties with the last kept match are seen and broken by frame order.
        k = min(size, top_k + 1 if top_k is not None else _FIRST_K)
        while True:
            similarities, rows = self._index.search(vector, k)
            last = similarities[-1] if len(rows) == k else -np.inf
            cut = similarities[top_k - 1] if top_k is not None and len(rows) >= top_k else -np.inf
            if k == size or last < self.threshold or last < cut:
                break
            k = min(size, 2 * k)
        keep = similarities >= self.threshold
        similarities, rows = similarities[keep], rows[keep]
        order = np.lexsort((rows, -similarities))[:top_k]
        return [LoopCandidate(frame_id, self._ids[rows[i]], float(similarities[i])) for i in order]

    def save(self, path: str | Path) -> None:
        """Write the whole state (settings, ids, descriptors, positions, index, metadata) atomically to one file."""
        count = len(self._ids)
        state = {
            "version": STATE_VERSION,
            "threshold": self.threshold,
            "exclude_recent": self.exclude_recent,
            "top_k": self.top_k,
            "descriptor_dtype": self.descriptor_dtype,
            "index": self._index.settings.to_dict(),
            "frame_ids": self._ids,
            "metadata": self.metadata,
        }
        with atomic_write(path, "wb") as file:
            np.savez(
                file,
                state=np.array(json.dumps(state)),
                descriptors=self._descriptors[:count],
                positions=self._positions[:count],
                index=self._index.serialize(),
            )

    @classmethod
    def load(cls, path: str | Path, model: ImageDescriber | None = None) -> "OnlineLoopDetector":
        """The detector saved by :meth:`save`, ready to go on.

        Raises:
            InputError: the file is missing, or not a saved detector state.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"Loop detector state {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as archive:
                state = json.loads(str(archive["state"]))
                descriptors, positions, index = archive["descriptors"], archive["positions"], archive["index"]
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"{path} is not a saved loop detector state: {error}") from None
        if state.get("version") != STATE_VERSION:
            raise InputError(f"{path}: state version {state.get('version')!r}; this code reads version {STATE_VERSION}")
        detector = cls(
            state["threshold"],
            state["exclude_recent"],
            state["top_k"],
            IndexSettings(**state["index"]),
            model,
            state["descriptor_dtype"],
        )
        detector.metadata = state["metadata"]
        detector._index = GrowingIndex.deserialize(detector._index.settings, index)
        if len(state["frame_ids"]):
            detector._append(state["frame_ids"], descriptors, positions)
        expected = max(0, len(detector) - 1 - detector.exclude_recent)
        if detector._index.size != expected or len(descriptors) != len(detector):
            raise InputError(
                f"{path} is inconsistent: {len(detector)} frame ids, {len(descriptors)} descriptors, "
                f"{detector._index.size} indexed frames (expected {expected})"
            )
        return detector
