"""Logging set-up (main rank to the console, every rank to its own file) and a metric logger with ETA."""

import datetime
import logging
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from typing import TypeVar

from dinov2 import distributed

T = TypeVar("T")


def setup_logging(output: str | None = None, name: str = "dinov2", level: int = logging.INFO) -> logging.Logger:
    """Configure logger ``name``: the console on the main rank, and ``output`` (a folder or ``.log`` file).

    Non-main ranks log to ``<file>.rank<r>`` only. Calling it again replaces the handlers.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s", "%Y%m%d %H:%M:%S"
    )
    rank = distributed.get_rank()
    if rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setFormatter(formatter)
        logger.addHandler(console)
    if output:
        path = output if output.endswith((".txt", ".log")) else os.path.join(output, "logs", "log.txt")
        if rank > 0:
            path = f"{path}.rank{rank}"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        file_handler = logging.FileHandler(path)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


class SmoothedValue:
    """A series of values with a windowed median and average and a global average."""

    def __init__(self, window_size: int = 20) -> None:
        self.window = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, num: int = 1) -> None:
        self.window.append(value)
        self.count += num
        self.total += value * num

    @property
    def median(self) -> float:
        ordered = sorted(self.window)
        return ordered[len(ordered) // 2] if ordered else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    def __str__(self) -> str:
        return f"{self.median:.4f} ({self.global_avg:.4f})"


class MetricLogger:
    """Collects named metrics and logs them with iteration time and an ETA while iterating."""

    def __init__(self, delimiter: str = "  ", logger: logging.Logger | None = None) -> None:
        self.meters: defaultdict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.logger = logger or logging.getLogger("dinov2")

    def update(self, **values: float) -> None:
        for name, value in values.items():
            self.meters[name].update(float(value))

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def log_every(
        self, iterable: Iterable[T], print_freq: int, header: str = "", n_iterations: int | None = None
    ) -> Iterator[T]:
        """Yield from ``iterable``, logging progress, metrics, throughput and ETA every ``print_freq`` items."""
        total = n_iterations if n_iterations is not None else len(iterable)  # type: ignore[arg-type]
        start = last = time.time()
        iteration_time = SmoothedValue()
        for index, item in enumerate(iterable):
            yield item
            now = time.time()
            iteration_time.update(now - last)
            last = now
            if index % print_freq == 0 or index == total - 1:
                eta = datetime.timedelta(seconds=int(iteration_time.global_avg * (total - index - 1)))
                self.logger.info(
                    "%s [%d/%d] eta: %s %s time: %.4f s/it",
                    header,
                    index + 1,
                    total,
                    eta,
                    self,
                    iteration_time.median,
                )
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        self.logger.info("%s total time: %s", header, elapsed)
