"""Progress of long work: a bar on a terminal, and a line now and then where the output is a log (an Argo
step's, ``alpr run``'s), where a bar would show nothing until the end."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

LOG_EVERY_SECONDS = 30.0


class LogLines:
    """``advance(n)`` prints ``description: done/total`` at most every ``every`` seconds, and once at the end."""

    def __init__(self, description: str, total: int, every: float = LOG_EVERY_SECONDS):
        self.description, self.total, self.every = description, total, every
        self.done, self.last = 0, time.monotonic()

    def __call__(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.every:
            print(f"{self.description}: {self.done}/{self.total}", flush=True)
            self.last = now


@contextlib.contextmanager
def show_progress(description: str, total: int, enabled: bool = True, transient: bool = True
             ) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n=1)``: a rich bar on a terminal, log lines elsewhere, nothing if not enabled."""
    if not enabled:
        yield lambda n=1: None
        return
    if not sys.stdout.isatty():
        yield LogLines(description, total)
        return
    from rich.progress import Progress

    with Progress(transient=transient) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
