"""The demo: a synthetic place dataset, a head trained on a random ViT-S/14, evaluation; no downloads.

``python -m dinov2_vpr.run.demo [--output-dir demo_output]`` takes about two minutes on 2 CPU cores.
With a random backbone the numbers only show that the pipeline works; with real weights pass
``--pretrained-weights dinov2_vits14_pretrain.pth`` (see the README).
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from dinov2_vpr.data.synthetic import make_pair_dataset
from dinov2_vpr.run import eval as eval_command
from dinov2_vpr.run import train as train_command

logger = logging.getLogger("dinov2")

CONFIG_FILE = Path(__file__).resolve().parents[2] / "dinov2" / "configs" / "eval" / "vits14_pretrain.yaml"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DINOv2-VPR demo on generated data")
    parser.add_argument("--output-dir", default="demo_output", help="Where the data, the run and the evaluation go")
    parser.add_argument("--num-places", type=int, default=120, help="Places in the generated dataset")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrained-weights", help="A real ViT-S/14 checkpoint instead of the random backbone")
    return parser


def main(args: argparse.Namespace) -> dict:
    """Generate, train, evaluate; returns the evaluation results."""
    output = Path(args.output_dir).resolve()
    data = make_pair_dataset(output / "data", num_places=args.num_places, seed=0)
    print(f"Generated {data['num_images']} images and pair lists under {output / 'data'}")
    backbone = ["--pretrained-weights", args.pretrained_weights] if args.pretrained_weights else ["--random-backbone"]
    common = ["--config-file", str(CONFIG_FILE), *backbone, "--cache-dir", str(output / "feature_cache")]
    train_args = train_command.get_args_parser().parse_args(
        [
            *common,
            "--train-path",
            str(data["train_dir"]),
            "--image-root",
            str(data["image_root"]),
            "--split",
            "--output-dir",
            str(output / "train"),
            "--batch-size",
            "32",
            "--opts",
            f"vpr.train.epochs={args.epochs}",
        ]
    )
    train_command.main(train_args)
    lists = ["--pair-lists", *map(str, data["test_lists"]), str(data["final_list"])]
    evaluate = ["--dataset-root", str(data["image_root"]), *lists]
    print("\nTrained head:")
    results = eval_command.main(
        eval_command.get_args_parser().parse_args(
            [*common, *evaluate, "--head", str(output / "train"), "--output-dir", str(output / "eval")]
        )
    )
    print("\nZero-shot baseline (raw class-token cosine; its threshold only sets the answers):")
    baseline = eval_command.main(
        eval_command.get_args_parser().parse_args(
            [*common, *evaluate, "--threshold", "0.5", "--output-dir", str(output / "eval_zero_shot")]
        )
    )
    for trained, zero_shot in zip(results["lists"], baseline["lists"]):
        if trained["labelled"]:
            print(
                f"{trained['name']}: average precision {zero_shot['average_precision']:.3f} zero-shot "
                f"-> {trained['average_precision']:.3f} with the trained head"
            )
    answers = np.loadtxt(output / "eval" / f"{data['final_list'].stem}_result.txt", dtype=int)
    truth = np.loadtxt(data["final_labels"], dtype=int)
    print(
        f"\nFinal list answered in {output / 'eval' / (data['final_list'].stem + '_result.txt')}: "
        f"accuracy {np.mean(answers == truth):.3f} against the hidden labels"
    )
    print(
        f"Everything is under {output}: train/ (head.pth, checkpoints, tensorboard), eval/ and eval_zero_shot/ "
        "(answers, scores, metrics, curves)"
    )
    if not args.pretrained_weights:
        print(
            "The backbone was random: these numbers only show that the pipeline runs. Use real weights for real results."
        )
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
