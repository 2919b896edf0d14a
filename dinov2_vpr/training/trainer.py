"""Training on labelled pairs of images: ``train_on_pairs(cfg, learner, pairs, ...)``.

The learner (:mod:`dinov2_vpr.training.pair_learners`) is a head on cached pooled features, or the
last blocks and a head on cached trunk tokens. The global batch is the same whatever the number of
processes: each rank takes a strided slice of it, its loss is scaled so that DistributedDataParallel's
gradient average equals the mean over the global batch, and the order of the pairs and the dropout
masks depend only on the seed, the epoch and the step
(:func:`~dinov2_vpr.models.batch_dropout.global_batch_dropout`).
"""

import dataclasses
import inspect
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from fvcore.common.param_scheduler import CompositeParamScheduler, CosineParamScheduler, LinearParamScheduler
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from dinov2 import distributed
from dinov2.utils.errors import InputError
from dinov2_vpr.data.image_table import PairIndex
from dinov2_vpr.models.batch_dropout import global_batch_dropout
from dinov2_vpr.registry import LOSSES, lookup
from dinov2_vpr.training.checkpoints import Checkpointer
from dinov2_vpr.training.losses import PairLoss
from dinov2_vpr.training.pair_learners import PairLearner
from dinov2_vpr.training.place_losses import MultiSimilarityLoss  # noqa: F401  (registered: its name is refused clearly)
from dinov2_vpr.training.seeds import step_generator, step_seed
from dinov2_vpr.verification.evaluate import cosine_scores
from dinov2_vpr.verification.metrics import best_f1_threshold, pair_metrics
from dinov2_vpr.verification.plots import pr_curve_figure

logger = logging.getLogger("dinov2")


@dataclass
class TrainResult:
    """What a training run ends with."""

    best_epoch: int
    best_average_precision: float
    threshold: float
    state: dict
    history: list[dict] = field(default_factory=list)


def build_loss(cfg: DictConfig) -> PairLoss:
    """The pair loss named by ``vpr.loss.name``, given the keys of ``vpr.loss`` that it takes (``scale`` is
    ScaledCosineBCELoss's only).

    Raises:
        InputError: an unknown name, or a loss of place batches.
    """
    loss_cfg = OmegaConf.to_container(cfg.vpr.loss, resolve=True)
    name = loss_cfg.pop("name")
    loss_class = lookup(LOSSES, name, "vpr.loss.name")
    if not issubclass(loss_class, PairLoss):
        pair_losses = sorted(registered for registered, value in LOSSES if issubclass(value, PairLoss))
        raise InputError(
            f"vpr.loss.name={name!r} trains on place batches (--places-root), not on pair lists; "
            f"choose one of: {', '.join(pair_losses)}"
        )
    accepted = inspect.signature(loss_class).parameters
    return loss_class(**{key: value for key, value in loss_cfg.items() if key in accepted})


def _parameter_groups(learner: PairLearner, lr: float, tail_lr: float | None) -> list[dict]:
    """The learner's trained parameters: the pretrained blocks' at ``tail_lr`` (None: ``lr``), the new ones at ``lr``."""
    tail = learner.tail_parameters()
    tail_ids = {id(parameter) for parameter in tail}
    new = [p for p in learner.module.parameters() if p.requires_grad and id(p) not in tail_ids]
    groups = [{"params": new, "lr": lr}]
    if tail:
        groups.append({"params": tail, "lr": lr if tail_lr is None else tail_lr})
    return groups


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


def _renumbered(pairs: PairIndex, images: Tensor) -> PairIndex:
    """``pairs`` with its image indices replaced by their positions in the sorted ``images``."""
    return dataclasses.replace(
        pairs, query=torch.searchsorted(images, pairs.query), reference=torch.searchsorted(images, pairs.reference)
    )


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


def train_on_pairs(
    cfg: DictConfig,
    learner: PairLearner,
    train_pairs: PairIndex,
    val_pairs: PairIndex,
    output_dir: str | Path,
    resume: bool = True,
) -> TrainResult:
    """Train ``learner`` with ``vpr.loss`` on the cosines of the descriptors of ``train_pairs``.

    Writes per-epoch checkpoints (learner state, optimizer, scheduler, epoch, config) and the best one
    by validation average precision on ``val_pairs`` under ``<output_dir>/checkpoints``, TensorBoard
    events under ``<output_dir>/tensorboard``. With ``resume``, continues from the last checkpoint found there.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    train_cfg = cfg.vpr.train
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    loss_fn = build_loss(cfg)
    model = DistributedDataParallel(learner.module) if distributed.is_enabled() else learner.module
    optimizer = torch.optim.AdamW(
        _parameter_groups(learner, train_cfg.lr, train_cfg.tail_lr),
        lr=train_cfg.lr,
        weight_decay=train_cfg.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_pairs) / train_cfg.batch_size)
    total_steps = steps_per_epoch * train_cfg.epochs
    lr_factor = _learning_rate_factor(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(min(step / total_steps, 0.999999)))
    val_images = torch.cat([val_pairs.query, val_pairs.reference]).unique()
    val_index = _renumbered(val_pairs, val_images)

    checkpointer = Checkpointer(Path(output_dir) / "checkpoints")
    start_epoch, best, history = 0, {"epoch": -1, "average_precision": -1.0, "threshold": 0.0, "state": None}, []
    state = checkpointer.load_last() if resume else None
    if state is not None:
        learner.load_state(state[learner.state_key], checkpointer.last_path())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        logger.info("Resuming from %s at epoch %d", checkpointer.last_path(), start_epoch)

    writer = None
    if distributed.is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_epoch * steps_per_epoch)
    val_labels = val_pairs.labels.numpy()
    for epoch in range(start_epoch, train_cfg.epochs):
        learner.module.train()
        order = torch.randperm(len(train_pairs), generator=step_generator(train_cfg.seed, epoch))
        epoch_loss = torch.zeros(2, dtype=torch.float64)
        for step in range(steps_per_epoch):
            global_batch = order[step * train_cfg.batch_size : (step + 1) * train_cfg.batch_size]
            local = global_batch[rank::world_size]
            # This rank's rows of the global batch: its queries, then their references.
            positions = torch.arange(len(global_batch))[rank::world_size]
            rows = torch.cat([positions, positions + len(global_batch)])
            inputs = learner.inputs(torch.cat([train_pairs.query[local], train_pairs.reference[local]]))
            with global_batch_dropout(step_seed(train_cfg.seed, epoch, step), 2 * len(global_batch), rows):
                descriptors = model(inputs)
            query, reference = descriptors.split(len(local))
            losses = loss_fn((query * reference).sum(dim=-1), train_pairs.labels[local].to(query.device))
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
                for name, rate in zip(("train/lr", "train/tail_lr"), scheduler.get_last_lr()):
                    writer.add_scalar(name, rate, global_step)

        scores = cosine_scores(learner.describe(val_images), val_index)
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
                "state": {key: value.detach().clone() for key, value in learner.state().items()},
            }
            checkpointer.save(
                "best",
                {learner.state_key: best["state"], "epoch": epoch, "config": OmegaConf.to_container(cfg)},
                tag_last=False,
            )
        checkpointer.save(
            f"epoch_{epoch:04d}",
            {
                learner.state_key: learner.state(),
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
    if best["state"] is None:
        raise RuntimeError("No epoch was trained: vpr.train.epochs must be at least 1")
    return TrainResult(best["epoch"], best["average_precision"], best["threshold"], best["state"], history)
