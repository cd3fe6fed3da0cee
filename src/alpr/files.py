"""Files written whole or not at all: a reader, or a step run again, never finds one half-written."""

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alpr.errors import UsageError


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A partial path beside ``path`` to write to; renamed over ``path`` once the block ends without an
    error: a crash leaves the old file, or none."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Writes ``data`` beside ``path``, then renames it over ``path``."""
    with written_whole(path) as partial:
        if isinstance(data, str):
            partial.write_text(data)
        else:
            partial.write_bytes(data)


def copy_atomic(source: Path, path: Path) -> None:
    """Copies ``source`` to ``path`` as write_atomic writes, streaming (a checkpoint can be large)."""
    with written_whole(path) as partial:
        shutil.copyfile(source, partial)


def missing(path: Path, folder: bool) -> str:
    """Why a path that should name a folder (or a file) does not: nothing is there, or the other kind."""
    if not path.exists():
        return "not found"
    return "a file, not a folder" if folder else "a folder, not a file"


def write_image(path: Path, picture) -> bool:
    """``cv2.imwrite``, through Python's file writing: OpenCV's own dies (SIGSEGV) on a file name that
    is not UTF-8, as one from a Windows archive can be. False where OpenCV has no writer for the
    suffix or that picture."""
    import cv2

    try:
        encoded, data = cv2.imencode(path.suffix, picture)
    except cv2.error:
        return False
    if encoded:
        path.write_bytes(data.tobytes())
    return encoded


@contextmanager
def held_alone(lock: Path, busy: str) -> Iterator[None]:
    """Holds an exclusive lock on the file ``lock`` while the block runs; UsageError(busy) at once
    where another process holds it (the kernel drops a killed holder's lock)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:  # "a": a lock that is also a marker keeps what it says
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(busy) from None
        yield
