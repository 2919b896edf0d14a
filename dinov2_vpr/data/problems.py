"""Problems found in a user's data before any work: each ``file:line: what`` (or ``path: what``), all in one error."""

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dinov2.utils.errors import InputError

MAX_LISTED_PROBLEMS = 20


class ProblemListError(InputError):
    """Every problem of an input, listed (the first ``MAX_LISTED_PROBLEMS`` and a count) with what to do.

    Subclasses name the input (``subject``) and the way out (``remedy``); ``problems`` keeps them all.
    """

    subject = "the input"
    remedy = "Fix these problems."

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        lines = [f"{len(self.problems)} problem(s) in {self.subject}:"]
        lines += [f"  {problem}" for problem in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        lines.append(self.remedy)
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:
        """Pickle from the problems (e.g. across submitit or DataLoader worker processes)."""
        return type(self), (self.problems,)


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable image, or None when PIL can open it and read its size."""
    if not path.is_file():
        return f"not found: {path}"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return f"cannot be read as an image ({type(error).__name__}: {error}): {path}"
    if width <= 0 or height <= 0:
        return f"has an empty size {width}x{height}: {path}"
    return None
