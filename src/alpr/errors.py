"""The errors that mean bad input or state: reported as one clear message, never a traceback."""

import json
from pathlib import Path


class AlprError(Exception):
    """Base of every error whose message alone tells the user what to fix."""


class UsageError(AlprError, ValueError):
    """A flag or argument with a bad value; the message names it and what is allowed."""


def read_json(path: Path) -> object:
    """A JSON file's content, or an error naming the file and the problem (a half-written or edited file)."""
    try:
        return json.loads(path.read_text())
    except ValueError as error:  # invalid JSON or not UTF-8
        raise AlprError(f"{path}: not valid JSON ({error})") from None
