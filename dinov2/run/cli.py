"""The commands' entry point: parse the command line, run (here or on SLURM), report the user's mistakes.

A mistake of the user's (:class:`dinov2.utils.errors.InputError`: a wrong or missing file, an
unknown config key, a checkpoint that does not fit, contradictory options) prints its message alone
on stderr and exits with status 2, as argparse does for a bad option. ``--debug`` (or
``DINOV2_VPR_DEBUG=1``) shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dinov2.run.submit import submit_or_run
from dinov2.utils.errors import InputError

DEBUG_VARIABLE = "DINOV2_VPR_DEBUG"
INPUT_ERROR_STATUS = 2


def run_cli(
    parser: argparse.ArgumentParser,
    main: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None = None,
    check: Callable[[argparse.Namespace], None] | None = None,
    launcher: bool = True,
) -> None:
    """Parse ``argv`` (default: the command line), then ``check`` and run ``main`` on the arguments.

    Args:
        parser: the command's parser (with the ``--debug`` option of :func:`dinov2.eval.setup.get_args_parser`).
        main: the command's entry point.
        argv: the arguments (default ``sys.argv[1:]``).
        check: rejects bad options before anything runs or is submitted.
        launcher: run through :func:`dinov2.run.submit.submit_or_run` (``--slurm``); else call ``main`` here.
    """
    args = parser.parse_args(argv)
    try:
        if check is not None:
            check(args)
        if launcher:
            submit_or_run(args, main)
        else:
            main(args)
    except InputError as error:
        if args.debug or os.environ.get(DEBUG_VARIABLE) == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(INPUT_ERROR_STATUS) from None
