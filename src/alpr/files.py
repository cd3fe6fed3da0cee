"""Files written whole or not at all: a reader, or a step run again, never finds one half-written."""

import os
import shutil
from pathlib import Path


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Writes ``data`` beside ``path``, then renames it over ``path``: a crash leaves the old file, or none."""
    partial = _partial(path)
    if isinstance(data, str):
        partial.write_text(data)
    else:
        partial.write_bytes(data)
    os.replace(partial, path)


def copy_atomic(source: Path, path: Path) -> None:
    """Copies ``source`` to ``path`` as write_atomic writes, streaming (a checkpoint can be large)."""
    partial = _partial(path)
    shutil.copyfile(source, partial)
    os.replace(partial, path)
