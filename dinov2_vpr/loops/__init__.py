"""Loop closures: offline in a whole sequence (:mod:`.sequence`, files in :mod:`.report`), or online,
frame by frame, in a growing map (:mod:`.online`, followed folders in :mod:`.stream`)."""

from dinov2_vpr.loops.index import IndexSettings
from dinov2_vpr.loops.online import OnlineLoopDetector
from dinov2_vpr.loops.sequence import (
    FrameId,
    LoopCandidate,
    best_earlier_match,
    downsampled_similarity,
    find_loop_candidates,
    loop_detection_metrics,
    loop_precision_recall_curve,
    similarity_matrix_image,
    true_loops,
)

__all__ = [
    "FrameId",
    "IndexSettings",
    "LoopCandidate",
    "OnlineLoopDetector",
    "best_earlier_match",
    "downsampled_similarity",
    "find_loop_candidates",
    "loop_detection_metrics",
    "loop_precision_recall_curve",
    "similarity_matrix_image",
    "true_loops",
]
