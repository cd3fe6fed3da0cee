"""Files written whole or not at all: a reader, or a step run again, never finds one half-written."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
