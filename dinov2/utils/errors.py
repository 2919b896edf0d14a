"""Errors that are the user's to fix (a bad file, option or config key), as opposed to bugs.

Commands print these as one line on stderr and exit with status 2 (see :mod:`dinov2.run.cli`);
any other exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """A user's input is wrong: the message names the file, line, option or key and what to do."""


class InputFileNotFoundError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""
