"""Benchmark SALAD's aggregation ``V[d, k] = sum_n f[d, n] P[k, n]``: einsum against the repeat formulation.

The repeat formulation (the baseline, written here from the formula) expands both factors to
``(B, cluster_dim, num_clusters, n)`` before multiplying and summing; the einsum never builds that
tensor. Sizes default to the released model (768 channels, 64 clusters of 128 dims) at 322x322
(a 23x23 grid), batch 32. Reported: median seconds of ``--repeats`` runs after a warm-up, and the
peak memory of one run above what was allocated before it (CUDA: the allocator's peak; CPU: the
process's peak RSS, reset through /proc/self/clear_refs).

Run: .venv/bin/python bench/bench_salad_aggregation.py [--batch 32 --grid 23 --device cpu --repeats 3]
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dinov2_vpr.models.aggregators import SALAD
from dinov2_vpr.models.aggregators.salad import log_sinkhorn


def repeat_aggregation(local: Tensor, assignment: Tensor) -> Tensor:
    """``(B, l, n)`` features and ``(B, m, n)`` assignment to ``(B, l, m)``, through ``(B, l, m, n)`` copies."""
    num_clusters, cluster_dim = assignment.shape[1], local.shape[1]
    expanded_local = local.unsqueeze(2).repeat(1, 1, num_clusters, 1)
    expanded_assignment = assignment.unsqueeze(1).repeat(1, cluster_dim, 1, 1)
    return (expanded_local * expanded_assignment).sum(dim=-1)


def einsum_aggregation(local: Tensor, assignment: Tensor) -> Tensor:
    """The same ``(B, l, m)`` result as one contraction over ``n``."""
    return torch.einsum("bln,bmn->blm", local, assignment)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mib(step: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory of one ``step`` above the memory in use before it, in MiB (None where it cannot be measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    step()
    return (_rss_kib("VmHWM") - before) / 1024


def median_seconds(step: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``repeats`` runs after one warm-up."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grid", type=int, default=23, help="patch grid side (23: 322x322 images)")
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--cluster-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    salad = SALAD(args.channels, args.clusters, args.cluster_dim).eval().to(device)
    features = torch.randn(args.batch, args.channels, args.grid, args.grid, device=device)
    cls_token = torch.randn(args.batch, args.channels, device=device)
    with torch.no_grad():
        local = salad.cluster_features(features).flatten(2)
        assignment = log_sinkhorn(salad.score(features).flatten(2), salad.dust_bin).exp()[:, :-1]
    weights = torch.randn(args.batch, args.cluster_dim, args.clusters, device=device)

    def inference(aggregation: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], Tensor]:
        def step() -> Tensor:
            with torch.no_grad():
                return aggregation(local, assignment)

        return step

    def training(aggregation: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], None]:
        def step() -> None:
            local_leaf, assignment_leaf = local.clone().requires_grad_(), assignment.clone().requires_grad_()
            (aggregation(local_leaf, assignment_leaf) * weights).sum().backward()

        return step

    with torch.no_grad():
        difference = (einsum_aggregation(local, assignment) - repeat_aggregation(local, assignment)).abs().max().item()
    n = args.grid**2
    expanded_mib = args.batch * args.cluster_dim * args.clusters * n * 4 / 2**20
    print(
        f"SALAD aggregation on {device}: batch {args.batch}, {args.grid}x{args.grid} grid (n={n}), "
        f"{args.clusters} clusters x {args.cluster_dim} dims, {args.channels} channels; "
        f"one (B, l, m, n) float32 copy is {expanded_mib:.0f} MiB; max |einsum - repeat| {difference:.1e}"
    )
    print(
        f"{'step':<26} {'repeat s':>9} {'einsum s':>9} {'speed-up':>9} {'repeat MiB':>11} {'einsum MiB':>11} {'ratio':>8}"
    )
    for name, make_step in (("V, inference", inference), ("V, forward + backward", training)):
        seconds = [median_seconds(make_step(f), device, args.repeats) for f in (repeat_aggregation, einsum_aggregation)]
        peaks = [peak_mib(make_step(f), device) for f in (repeat_aggregation, einsum_aggregation)]
        if None in peaks:
            memory = f"{'n/a':>11} {'n/a':>11} {'':>8}"
        else:  # under 1 MiB the einsum's peak is below what RSS resolves: the ratio is a lower bound
            ratio = f"{'>' if peaks[1] < 1 else ''}{peaks[0] / max(peaks[1], 1.0):.0f}x"
            memory = f"{peaks[0]:>11.1f} {peaks[1]:>11.1f} {ratio:>8}"
        print(f"{name:<26} {seconds[0]:>9.4f} {seconds[1]:>9.4f} {seconds[0] / seconds[1]:>8.1f}x {memory}")
    with torch.no_grad():
        whole = median_seconds(lambda: salad(features, cls_token), device, args.repeats)
    print(f"for scale: the whole SALAD forward (einsum, inference) takes {whole:.4f} s")


if __name__ == "__main__":
    main()
