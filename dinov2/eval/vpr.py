"""VPR evaluation in the DINOv2 layout: ``python -m dinov2.eval.vpr <options>`` runs it here.

The work is ``dinov2_vpr.run.eval`` (same options, same outputs); ``python -m dinov2.run.eval.vpr``
submits it to SLURM.
"""

import argparse

from dinov2.run.cli import run_cli
from dinov2_vpr.run import eval as vpr_eval


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The options of ``dinov2_vpr.run.eval``, launcher options included."""
    return vpr_eval.get_args_parser(add_help=add_help)


def main(args: argparse.Namespace) -> dict:
    """Evaluate loop-closure decisions on pair lists; writes and returns the metrics of ``dinov2_vpr.run.eval``."""
    return vpr_eval.main(args)


if __name__ == "__main__":
    run_cli(get_args_parser(), main)
