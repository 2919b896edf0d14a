"""Fine-tuning of a place model (SALAD, BoQ) on places: ``train_places(cfg, model, places, val, ...)``.

P x K batches (:class:`PlaceBatchSampler`), the multi-similarity loss and miner over the whole global
batch, AdamW with the recipe's schedule (:func:`place_lr_factor`), Recall@1/5/10 on a validation
benchmark every epoch and the best model by R@1. Without augmentation the frozen trunk's tokens are
encoded once into the token cache and every epoch runs only the tail and the aggregator; with it,
each step runs the whole backbone (the trunk without gradients). Every step seeds torch's RNG from
(seed, epoch, step, rank) (augmentation) and draws the dropout masks of the whole global batch from
(seed, epoch, step) (:func:`~dinov2_vpr.models.batch_dropout.global_batch_dropout`), so a resumed run
trains the same model; the gradients are averaged over ranks, and the loss sees the global batch, so
without augmentation the global step is the same on any number of ranks.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dinov2 import distributed
from dinov2_vpr.data.augment import TrainAugmentation
from dinov2_vpr.data.places import Places
from dinov2_vpr.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, image_transform
from dinov2_vpr.models.backbone import features_autocast_dtype
from dinov2_vpr.models.batch_dropout import global_batch_dropout
from dinov2_vpr.models.build import load_trainable_state, trainable_state
from dinov2_vpr.models.place_model import PlaceModel
from dinov2_vpr.training.checkpoints import Checkpointer
from dinov2_vpr.training.place_data import (
    LabelledImages,
    ValidationSet,
    cached_trunk_tokens,
    validation_transform,
)
from dinov2_vpr.training.place_losses import MultiSimilarityLoss
from dinov2_vpr.training.place_validation import validate
from dinov2_vpr.training.samplers import PlaceBatchSampler
from dinov2_vpr.training.schedules import place_lr_factor
from dinov2_vpr.training.seeds import step_seed

logger = logging.getLogger("dinov2")


@dataclass
class PlaceTrainResult:
    """What place training ends with: the best epoch by validation R@1, its recalls and trainable state."""

    best_epoch: int
    recalls: dict[str, float]
    zero_shot: dict[str, float]
    state: dict[str, Tensor]
    history: list[dict] = field(default_factory=list)


class _TrainInputs:
    """Each step's inputs on the model's device: cached trunk tokens, or (augmented) images, with place labels."""

    def __init__(
        self,
        cfg: DictConfig,
        model: PlaceModel,
        places: Places,
        sampler: PlaceBatchSampler,
        transform: ImageTransform,
        autocast_dtype: torch.dtype,
        pretrained_weights: str | None,
        output_dir: Path,
    ) -> None:
        train_cfg = cfg.vpr.train
        self.sampler, self.seed = sampler, train_cfg.seed
        self.labels = torch.as_tensor(places.labels)
        self.device = next(model.parameters()).device
        self.cached = not train_cfg.augment and train_cfg.trunk_cache
        self.augment = None
        if train_cfg.augment:
            augment = TrainAugmentation(cfg.vpr.data.image_size, group_size=train_cfg.augment_group_size)
            self.augment = augment.to(self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        if self.cached:
            self.cache, self.identities = cached_trunk_tokens(
                cfg, model, places.images, transform, autocast_dtype, pretrained_weights, output_dir
            )
        else:
            dataset = LabelledImages(places.images, places.labels, transform)
            self.loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.vpr.data.num_workers)

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's ``(inputs, labels)``; torch's RNG is seeded before each (augmentation, dropout)."""
        self.sampler.set_epoch(epoch)
        rank = self.sampler.rank
        if self.cached:
            for step, indices in enumerate(self.sampler):
                torch.manual_seed(step_seed(self.seed, epoch, step, rank))
                tokens = self.cache.read([self.identities[index] for index in indices])
                yield tokens.to(self.device, torch.float32), self.labels[indices].to(self.device)
            return
        for step, (images, labels) in enumerate(self.loader):
            torch.manual_seed(step_seed(self.seed, epoch, step, rank))
            images = images.to(self.device)
            if self.augment is not None:
                images = self.augment(images * self.std + self.mean)
            yield images, labels.to(self.device)


def _descriptors(model: PlaceModel, inputs: Tensor, cached: bool, grid: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Descriptors of trunk tokens (``cached``) or images: tail under autocast, aggregator in float32."""
    with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype != torch.float):
        tokens = model.forward_tail(inputs if cached else model.forward_trunk(inputs), grid)
    return model.aggregate(tokens.float()).descriptors


def _average_gradients(parameters: list[nn.Parameter]) -> None:
    if distributed.is_enabled() and distributed.get_world_size() > 1:
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= distributed.get_world_size()


def _log_recalls(writer, recalls: dict[str, float], step: int) -> None:
    for name, recall in recalls.items():
        writer.add_scalar(f"val/{name}", recall, step)


def train_places(
    cfg: DictConfig,
    model: PlaceModel,
    places: Places,
    val: ValidationSet,
    output_dir: str | Path,
    pretrained_weights: str | None,
    resume: bool = True,
) -> PlaceTrainResult:
    """Fine-tune ``model`` (its trainable blocks, norm and aggregator) on ``places``; select by R@1 on ``val``.

    Writes per-epoch checkpoints (trainable state, optimizer, scheduler, epoch, best, history, config)
    and ``best.pth`` under ``<output_dir>/checkpoints`` (rank 0), TensorBoard events under
    ``<output_dir>/tensorboard`` (R@K, loss, learning rate, mined pairs). With ``resume``, continues
    from the last checkpoint there. The recalls before training are the ``zero_shot`` ones.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    train_cfg, output_dir = cfg.vpr.train, Path(output_dir)
    device = next(model.parameters()).device
    autocast_dtype = features_autocast_dtype(cfg, device)
    transform, val_transform = image_transform(cfg), validation_transform(cfg)
    grid = (transform.size[0] // model.backbone.patch_size, transform.size[1] // model.backbone.patch_size)
    model.aggregator.check_grid(*grid, model.backbone.patch_size)
    sampler = PlaceBatchSampler(
        places.labels,
        train_cfg.places_per_batch,
        train_cfg.images_per_place,
        train_cfg.seed,
        distributed.get_rank(),
        distributed.get_world_size(),
    )
    inputs = _TrainInputs(cfg, model, places, sampler, transform, autocast_dtype, pretrained_weights, output_dir)
    loss_fn = MultiSimilarityLoss()
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, place_lr_factor(train_cfg, len(sampler)))
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    validation = {"batch_size": cfg.vpr.features.batch_size, "num_workers": cfg.vpr.data.num_workers}

    checkpointer = Checkpointer(output_dir / "checkpoints")
    state = checkpointer.load_last() if resume else None
    if state is not None:
        load_trainable_state(model, state["model"], checkpointer.last_path())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best, history, zero_shot = state["epoch"] + 1, state["best"], state["history"], state["zero_shot"]
        logger.info("Resuming from %s at epoch %d", checkpointer.last_path(), start_epoch)
    else:
        start_epoch, history = 0, []
        best = {"epoch": -1, "recalls": {"R@1": -1.0}, "model": None}
        zero_shot = validate(model, val, val_transform, autocast_dtype, **validation)
        logger.info("Before training: %s", ", ".join(f"{k} {v:.4f}" for k, v in zero_shot.items()))

    steps = len(sampler)
    writer = None
    if distributed.is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_epoch * steps)
        if start_epoch == 0:
            _log_recalls(writer, zero_shot, 0)
    global_batch = sampler.places_per_batch * sampler.images_per_place
    local_rows = torch.arange(global_batch)[sampler.rank :: sampler.world_size]  # this rank's rows of each batch
    model.train()
    for epoch in range(start_epoch, train_cfg.epochs):
        totals = torch.zeros(4, dtype=torch.float64)  # loss, steps, positive and negative pairs
        started = time.perf_counter()
        for step, (batch, labels) in enumerate(inputs.batches(epoch)):
            with global_batch_dropout(step_seed(train_cfg.seed, epoch, step), global_batch, local_rows):
                descriptors = _descriptors(model, batch, inputs.cached, grid, autocast_dtype)
            loss, pairs = loss_fn(descriptors, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The training loss became {loss.item()} at epoch {epoch}, step {step}: "
                    f"lower vpr.train.lr (now {train_cfg.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            _average_gradients(parameters)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            counts = (pairs["positive_pairs"], pairs["negative_pairs"])
            totals += torch.tensor([loss.item(), 1.0, *counts], dtype=torch.float64)
            if writer is not None:
                global_step = epoch * steps + step
                writer.add_scalar("train/loss", loss.item(), global_step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
                writer.add_scalar("train/positive_pairs", counts[0], global_step)
                writer.add_scalar("train/negative_pairs", counts[1], global_step)

        seconds = time.perf_counter() - started
        recalls = validate(model, val, val_transform, autocast_dtype, **validation)
        record = {
            "epoch": epoch,
            "train_loss": (totals[0] / totals[1].clamp(min=1)).item(),
            "train_seconds": seconds,
            "images_per_s": totals[1].item() * sampler.places_per_batch * sampler.images_per_place / seconds,
            **recalls,
        }
        history.append(record)
        logger.info(
            "Epoch %d/%d: train loss %.4f, %s, lr %.2e",
            epoch + 1,
            train_cfg.epochs,
            record["train_loss"],
            ", ".join(f"{k} {v:.4f}" for k, v in recalls.items()),
            scheduler.get_last_lr()[0],
        )
        if writer is not None:
            _log_recalls(writer, recalls, (epoch + 1) * steps)
        if recalls["R@1"] > best["recalls"]["R@1"]:
            current = {key: value.detach().clone() for key, value in trainable_state(model).items()}
            best = {"epoch": epoch, "recalls": recalls, "model": current}
            checkpointer.save(
                "best", {"model": current, "epoch": epoch, "config": OmegaConf.to_container(cfg)}, tag_last=False
            )
        checkpointer.save(
            f"epoch_{epoch:04d}",
            {
                "model": trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best": best,
                "history": history,
                "zero_shot": zero_shot,
                "config": OmegaConf.to_container(cfg),
            },
            keep_last=train_cfg.keep_checkpoints,
        )
        distributed.barrier()
    if writer is not None:
        writer.close()
    if best["model"] is None:
        raise RuntimeError("No epoch was trained: vpr.train.epochs must be at least 1")
    return PlaceTrainResult(best["epoch"], best["recalls"], zero_shot, best["model"], history)
