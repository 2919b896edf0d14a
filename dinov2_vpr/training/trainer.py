"""Training of a descriptor head on cached backbone features: ``train_head(cfg, features, pairs, ...)``.

The global batch is the same whatever the number of processes: each rank takes a strided slice of
it, its loss is scaled so that DistributedDataParallel's gradient average equals the mean over the
global batch, and the order of the pairs depends only on the seed and the epoch.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from fvcore.common.param_scheduler import CompositeParamScheduler, CosineParamScheduler, LinearParamScheduler
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import dinov2_vpr.training.losses  # noqa: F401  (registers the losses)
from dinov2 import distributed
from dinov2.utils.utils import fix_random_seeds
from dinov2_vpr.data.image_table import PairIndex
from dinov2_vpr.models.build import build_head
from dinov2_vpr.registry import LOSSES, lookup
from dinov2_vpr.training.checkpoints import Checkpointer
from dinov2_vpr.verification.evaluate import cosine_scores, describe_rows
from dinov2_vpr.verification.metrics import best_f1_threshold, pair_metrics
from dinov2_vpr.verification.plots import pr_curve_figure

logger = logging.getLogger("dinov2")


@dataclass
class TrainResult:
    """What a training run ends with."""

    best_epoch: int
    best_average_precision: float
    threshold: float
    head_state: dict
    history: list[dict] = field(default_factory=list)


def build_loss(cfg: DictConfig) -> nn.Module:
    """The loss named by ``vpr.loss.name``."""
    loss_cfg = OmegaConf.to_container(cfg.vpr.loss, resolve=True)
    return lookup(LOSSES, loss_cfg.pop("name"), "vpr.loss.name")(**loss_cfg)


def _learning_rate_factor(cfg: DictConfig) -> CompositeParamScheduler:
    train = cfg.vpr.train
    warmup = min(max(train.warmup_epochs / train.epochs, 0.0), 1.0)
    floor = train.min_lr / train.lr
    if warmup == 0:
        return CompositeParamScheduler([CosineParamScheduler(1.0, floor)], [1.0], ["rescaled"])
    return CompositeParamScheduler(
        [LinearParamScheduler(floor, 1.0), CosineParamScheduler(1.0, floor)],
        [warmup, 1 - warmup],
        ["rescaled", "rescaled"],
    )


def _generator(*key: int) -> torch.Generator:
    """A generator seeded by ``key`` (e.g. seed, epoch, step), the same on every rank and after a resume."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def _dropout_masks(head: nn.Module, rows: int, generator: torch.Generator) -> list[Tensor] | None:
    """The head's dropout masks for ``rows`` rows of the global batch (None for heads without dropout)."""
    draw = getattr(head, "draw_dropout_masks", None)
    return None if draw is None else draw(rows, generator)


def _all_reduce_sum(value: Tensor) -> Tensor:
    if distributed.is_enabled():
        dist.all_reduce(value)
    return value


def _log_validation(writer, epoch: int, labels: np.ndarray, scores: np.ndarray, metrics: dict, is_best: bool) -> None:
    """Scalars and TensorBoard's interactive PR curve every epoch; the PR curve picture at each new best."""
    writer.add_scalar("val/average_precision", metrics["average_precision"], epoch)
    writer.add_scalar("val/recall_at_100_precision", metrics["recall_at_100_precision"], epoch)
    writer.add_scalar("val/best_f1", metrics["best_f1"], epoch)
    writer.add_pr_curve("val/pr", labels, (scores + 1) / 2, epoch)  # cosine mapped to [0, 1]
    if is_best:
        writer.add_figure("val/pr_curve", pr_curve_figure(labels, scores, f"validation, epoch {epoch + 1}"), epoch)


def train_head(
    cfg: DictConfig,
    features: Tensor,
    embed_dim: int,
    train_pairs: PairIndex,
    val_pairs: PairIndex,
    output_dir: str | Path,
    initial_head_state: dict | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train ``vpr.head`` with ``vpr.loss`` on pairs of rows of ``features`` (the head inputs).

    Writes per-epoch checkpoints (head, optimizer, scheduler, epoch, config) and the best one by
    validation average precision under ``<output_dir>/checkpoints``, TensorBoard events under
    ``<output_dir>/tensorboard``. With ``resume``, continues from the last checkpoint found there.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    train_cfg = cfg.vpr.train
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    fix_random_seeds(train_cfg.seed)
    head = build_head(cfg, embed_dim)
    if initial_head_state is not None:
        head.load_state_dict(initial_head_state)
    elif hasattr(head, "fit_input_statistics"):
        head.fit_input_statistics(features[torch.cat([train_pairs.query, train_pairs.reference]).unique()].float())
    loss_fn = build_loss(cfg)
    model = DistributedDataParallel(head) if distributed.is_enabled() else head
    optimizer = torch.optim.AdamW(head.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_pairs) / train_cfg.batch_size)
    total_steps = steps_per_epoch * train_cfg.epochs
    lr_factor = _learning_rate_factor(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(min(step / total_steps, 0.999999)))

    checkpointer = Checkpointer(Path(output_dir) / "checkpoints")
    start_epoch, best, history = 0, {"epoch": -1, "average_precision": -1.0, "threshold": 0.0, "head": None}, []
    state = checkpointer.load_last() if resume else None
    if state is not None:
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        logger.info("Resuming from %s at epoch %d", checkpointer.last_path(), start_epoch)

    writer = None
    if distributed.is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_epoch * steps_per_epoch)
    val_labels = val_pairs.labels.numpy()
    features = features.float()
    for epoch in range(start_epoch, train_cfg.epochs):
        head.train()
        order = torch.randperm(len(train_pairs), generator=_generator(train_cfg.seed, epoch))
        epoch_loss = torch.zeros(2, dtype=torch.float64)
        for step in range(steps_per_epoch):
            global_batch = order[step * train_cfg.batch_size : (step + 1) * train_cfg.batch_size]
            local = global_batch[rank::world_size]
            # This rank's rows of the global batch: its queries, then their references.
            positions = torch.arange(len(global_batch))[rank::world_size]
            rows = torch.cat([positions, positions + len(global_batch)])
            inputs = features[torch.cat([train_pairs.query[local], train_pairs.reference[local]])]
            masks = _dropout_masks(head, 2 * len(global_batch), _generator(train_cfg.seed, epoch, step))
            descriptors = model(inputs) if masks is None else model(inputs, [mask[rows] for mask in masks])
            query, reference = descriptors.split(len(local))
            losses = loss_fn((query * reference).sum(dim=-1), train_pairs.labels[local])
            loss = losses.sum() * world_size / len(global_batch)
            batch_loss = _all_reduce_sum(
                torch.stack([losses.detach().sum().double(), torch.tensor(float(len(local)), dtype=torch.float64)])
            )
            if not torch.isfinite(batch_loss[0]):
                raise FloatingPointError(
                    f"The training loss became {batch_loss[0].item()} at epoch {epoch}, step {step}: "
                    f"lower vpr.train.lr (now {train_cfg.lr}) or check the features and labels."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += batch_loss
            if writer is not None:
                global_step = epoch * steps_per_epoch + step
                writer.add_scalar("train/loss", (batch_loss[0] / batch_loss[1]).item(), global_step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)

        scores = cosine_scores(describe_rows(head, features), val_pairs)
        metrics = pair_metrics(val_labels, scores)
        record = {
            "epoch": epoch,
            "train_loss": (epoch_loss[0] / epoch_loss[1]).item(),
            **{
                f"val_{k}": v
                for k, v in metrics.items()
                if k in ("average_precision", "recall_at_100_precision", "best_f1")
            },
        }
        history.append(record)
        logger.info(
            "Epoch %d/%d: train loss %.4f, val AP %.4f, R@100P %.4f, best F1 %.4f, lr %.2e",
            epoch + 1,
            train_cfg.epochs,
            record["train_loss"],
            metrics["average_precision"],
            metrics["recall_at_100_precision"],
            metrics["best_f1"],
            scheduler.get_last_lr()[0],
        )
        is_best = metrics["average_precision"] > best["average_precision"]
        if writer is not None:
            _log_validation(writer, epoch, val_labels, scores, metrics, is_best)
        if is_best:
            best = {
                "epoch": epoch,
                "average_precision": metrics["average_precision"],
                "threshold": best_f1_threshold(val_labels, scores),
                "head": {key: value.clone() for key, value in head.state_dict().items()},
            }
            checkpointer.save(
                "best", {"head": best["head"], "epoch": epoch, "config": OmegaConf.to_container(cfg)}, tag_last=False
            )
        checkpointer.save(
            f"epoch_{epoch:04d}",
            {
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best": best,
                "history": history,
                "config": OmegaConf.to_container(cfg),
            },
            keep_last=train_cfg.keep_checkpoints,
        )
        distributed.barrier()
    if writer is not None:
        writer.close()
    if best["head"] is None:
        raise RuntimeError("No epoch was trained: vpr.train.epochs must be at least 1")
    return TrainResult(best["epoch"], best["average_precision"], best["threshold"], best["head"], history)
