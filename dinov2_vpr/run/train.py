"""Train a head on pair lists, or fine-tune a place model on places.

Pair lists: ``python -m dinov2_vpr.run.train --train-path ROOT --pretrained-weights W ...`` accepts the
original DINOVPR command line (``--config-file --pretrained-weights --output-dir --split --train-path
--batch-size --use-pretrain-MLP --MLP-weight-path``) plus ``--opts key=value``; it writes ``head.pth``.
With ``--opts vpr.model.trainable_blocks=N`` it fine-tunes the last N blocks with the head on the
trunk token cache and writes ``model.pth`` (used by every command with ``--model``).

Places: ``python -m dinov2_vpr.run.train --method salad|boq --places-root DIR --val-folder DIR
--pretrained-weights dinov2_vitb14_pretrain.pth ...`` fine-tunes the method's model with its recipe
(``configs/<method>.yaml``, under the config file and ``--opts``); it writes ``model.pth``.
``--slurm`` with the launcher options of :mod:`dinov2.run.submit` submits the same run to SLURM;
``torchrun --nproc_per_node=N -m dinov2_vpr.run.train ...`` runs it on N processes here.
"""

import argparse
import json
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dinov2 import distributed
from dinov2.eval.setup import get_args_parser as get_setup_args_parser
from dinov2.run.cli import run_cli
from dinov2.run.submit import add_launcher_args
from dinov2.utils.errors import InputError
from dinov2_vpr.data.image_table import index_pairs
from dinov2_vpr.data.pairs import find_pair_lists, read_pair_lists, split_by_query
from dinov2_vpr.data.places import read_places
from dinov2_vpr.data.transforms import image_transform
from dinov2_vpr.features.pipeline import image_features
from dinov2_vpr.features.pooling import head_input
from dinov2_vpr.io import atomic_save_torch, atomic_write_text
from dinov2_vpr.models.build import METHOD_AGGREGATORS, MODEL_FILE, build_trainable_model
from dinov2_vpr.models.files import HEAD_FILE, load_head_file
from dinov2_vpr.run.model_options import add_backbone_args, check_backbone_args, setup_run
from dinov2_vpr.training.pair_learners import head_learner, tail_learner
from dinov2_vpr.training.place_data import read_validation_folder, validation_transform
from dinov2_vpr.training.place_trainer import train_places
from dinov2_vpr.training.trainer import train_on_pairs

logger = logging.getLogger("dinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a VPR head on frozen DINOv2 features (pair lists), or fine-tune a place model (places)",
        parents=[get_setup_args_parser(add_help=False)],
        add_help=add_help,
    )
    parser.add_argument("--train-path", help="Folder whose .txt pair lists are used for training")
    parser.add_argument(
        "--places-root",
        help="Place dataset to fine-tune a place model on: GSV-Cities (Dataframes/, Images/) or one folder per place",
    )
    parser.add_argument("--val-folder", help="With --places-root: a VPR benchmark (database/, queries/, UTM names)")
    parser.add_argument(
        "--method",
        choices=sorted(METHOD_AGGREGATORS),
        help="With --places-root: the place model and its training recipe (configs/<method>.yaml)",
    )
    parser.add_argument("--image-root", help="Folder the list paths are relative to (default: --train-path)")
    parser.add_argument(
        "--split", action="store_true", help="Hold out vpr.data.val_fraction of the pairs for validation"
    )
    parser.add_argument("--batch-size", type=int, help="Global batch size (sets vpr.train.batch_size)")
    parser.add_argument("--use-pretrain-MLP", action="store_true", help="Start from the head in --MLP-weight-path")
    parser.add_argument("--MLP-weight-path", help="A head.pth (or training checkpoint) to start from")
    parser.add_argument(
        "--no-resume", action="store_true", help="Start afresh even if the output folder has checkpoints"
    )
    return add_launcher_args(add_backbone_args(parser))


def check_args(args: argparse.Namespace) -> None:
    """Reject contradictory or missing options before any work starts."""
    check_backbone_args(args)
    if bool(args.train_path) == bool(args.places_root):
        raise InputError("Give either --train-path (pair lists) or --places-root (places), not both")
    if args.places_root:
        pair_options = [name for name, given in _PAIR_ONLY.items() if getattr(args, given)]
        if pair_options:
            raise InputError(f"{', '.join(pair_options)} train on pair lists: give them without --places-root")
        if not args.val_folder or not args.method:
            raise InputError("--places-root needs --val-folder (a VPR benchmark) and --method (salad or boq)")
    elif args.val_folder or args.method:
        raise InputError("--val-folder and --method are for place training: give them with --places-root")
    if args.use_pretrain_MLP and not args.MLP_weight_path:
        raise InputError("--use-pretrain-MLP needs --MLP-weight-path")


# Pair-list options and their argparse names.
_PAIR_ONLY = {
    "--image-root": "image_root",
    "--split": "split",
    "--batch-size": "batch_size",
    "--use-pretrain-MLP": "use_pretrain_MLP",
    "--MLP-weight-path": "MLP_weight_path",
}


def _options(args: argparse.Namespace) -> list[str]:
    opts = list(args.opts or [])
    if args.batch_size is not None:
        opts.append(f"vpr.train.batch_size={args.batch_size}")
    return opts


def main(args: argparse.Namespace) -> dict:
    """Train and write ``head.pth`` (pair lists) or ``model.pth`` (places) and ``train_metrics.json`` to
    ``args.output_dir``; returns the metrics."""
    check_args(args)
    if args.places_root:
        return train_place_model(args)
    args.opts = _options(args)
    cfg = setup_run(args)
    if cfg.vpr.model.method:
        raise InputError("vpr.model.method is for place training (--places-root --method); pair lists train a head")
    if cfg.vpr.train.augment or not cfg.vpr.train.trunk_cache:
        raise InputError(
            "vpr.train.augment=true and vpr.train.trunk_cache=false are for place training (--places-root): "
            "pair lists always train on cached features (the head) or cached trunk tokens (trainable_blocks)"
        )
    train_root = Path(args.train_path)
    image_root = Path(args.image_root or args.train_path)
    list_files = [train_root / name for name in cfg.vpr.data.train_lists] or find_pair_lists(train_root)
    pairs, problems = read_pair_lists(
        list_files,
        image_root,
        skip_invalid=cfg.vpr.data.skip_invalid,
        allow_outside_root=cfg.vpr.data.allow_outside_root,
    )
    unlabelled = sorted({pair.source for pair in pairs if pair.label is None})
    if unlabelled:
        raise InputError(f"Training needs labelled pair lists; these have no label column: {unlabelled}")
    if args.split:
        train_pairs, val_pairs = split_by_query(pairs, cfg.vpr.data.val_fraction, cfg.vpr.train.seed)
        if len({pair.label for pair in val_pairs}) < 2:
            raise InputError(
                f"The validation part ({len(val_pairs)} pairs) holds only one label: raise vpr.data.val_fraction "
                f"(now {cfg.vpr.data.val_fraction}) or add pairs"
            )
    else:
        logger.warning("No --split: validation (best epoch, decision threshold) uses the training pairs")
        train_pairs, val_pairs = pairs, pairs
    logger.info("%d training and %d validation pairs from %d lists", len(train_pairs), len(val_pairs), len(list_files))

    initial = load_head_file(args.MLP_weight_path)["head"] if args.use_pretrain_MLP else None
    image_paths, index = index_pairs(train_pairs + val_pairs, image_root)
    train_index = index.subset(range(len(train_pairs)))
    val_index = index.subset(range(len(train_pairs), len(index)))
    train_images = torch.cat([train_index.query, train_index.reference]).unique()
    if cfg.vpr.model.trainable_blocks:
        learner = tail_learner(cfg, args.pretrained_weights, image_paths, args.output_dir, train_images, initial)
        embed_dim = learner.model.backbone.embed_dim
    else:
        features, embed_dim = image_features(cfg, args.pretrained_weights, image_paths, args.output_dir)
        learner = head_learner(cfg, head_input(features, cfg.vpr.head.input), embed_dim, train_images, initial)
    result = train_on_pairs(cfg, learner, train_index, val_index, args.output_dir, resume=not args.no_resume)

    metrics = {
        "best_epoch": result.best_epoch,
        "val_average_precision": result.best_average_precision,
        "threshold": result.threshold,
        "num_train_pairs": len(train_pairs),
        "num_val_pairs": len(val_pairs),
        "skipped_problems": len(problems),
        "history": result.history,
    }
    if distributed.is_main_process():
        trained = {
            "threshold": result.threshold,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "pretrained_weights": args.pretrained_weights,
            "best_epoch": result.best_epoch,
        }
        if cfg.vpr.model.trainable_blocks:  # the last blocks and the head: a place model, for --model
            output = Path(args.output_dir) / MODEL_FILE
            trained.update(model=result.state, preprocessing=image_transform(cfg).settings())
        else:
            output = Path(args.output_dir) / HEAD_FILE
            trained.update(head=result.state, embed_dim=embed_dim)
        atomic_save_torch(trained, output)
        atomic_write_text(Path(args.output_dir) / "train_metrics.json", json.dumps(metrics, indent=2))
        logger.info(
            "Best epoch %d: validation AP %.4f, threshold %.4f; written to %s",
            result.best_epoch + 1,
            result.best_average_precision,
            result.threshold,
            output,
        )
    return metrics


def train_place_model(args: argparse.Namespace) -> dict:
    """Fine-tune ``--method``'s model on ``--places-root``, validated on ``--val-folder``; writes ``model.pth``
    (the best epoch's trainable state, the config, the preprocessing, its recalls) and ``train_metrics.json``."""
    cfg = setup_run(args, recipe=args.method)
    if cfg.vpr.model.method != args.method:
        raise InputError(f"--method {args.method} but vpr.model.method={cfg.vpr.model.method}: leave the latter out")
    val = read_validation_folder(args.val_folder)
    places = read_places(args.places_root, cfg.vpr.train.images_per_place, cfg.vpr.data.skip_invalid)
    logger.info("%d places of %d images (%s layout)", len(places.names), len(places.images), places.layout)
    model = build_trainable_model(cfg, args.pretrained_weights)
    result = train_places(cfg, model, places, val, args.output_dir, args.pretrained_weights, not args.no_resume)
    metrics = {
        "best_epoch": result.best_epoch,
        **{f"val_{name}": recall for name, recall in result.recalls.items()},
        "zero_shot": result.zero_shot,
        "num_places": len(places.names),
        "num_images": len(places.images),
        "skipped": places.skipped,
        "history": result.history,
    }
    if distributed.is_main_process():
        model_file = {
            "model": result.state,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "preprocessing": validation_transform(cfg).settings(),
            "recalls": result.recalls,
            "best_epoch": result.best_epoch,
            "pretrained_weights": args.pretrained_weights,
        }
        atomic_save_torch(model_file, Path(args.output_dir) / MODEL_FILE)
        atomic_write_text(Path(args.output_dir) / "train_metrics.json", json.dumps(metrics, indent=2))
        logger.info(
            "Best epoch %d: validation R@1 %.4f (%.4f before training); model written to %s",
            result.best_epoch + 1,
            result.recalls["R@1"],
            result.zero_shot["R@1"],
            Path(args.output_dir) / MODEL_FILE,
        )
    return metrics


if __name__ == "__main__":
    run_cli(get_args_parser(), main, check=check_args)  # the options are checked before a submission, too
