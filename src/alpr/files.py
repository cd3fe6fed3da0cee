"""Files written whole or not at all: a reader, or a step run again, never finds one half-written."""

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Writes ``data`` beside ``path``, then renames it over ``path``: a crash leaves the old file, or none."""
    partial = path.with_name(f".{path.name}.partial")
    if isinstance(data, str):
        partial.write_text(data)
    else:
        partial.write_bytes(data)
    os.replace(partial, path)
