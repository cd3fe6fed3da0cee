"""The errors that mean bad input or state: reported as one clear message, never a traceback."""

import json
import re
from pathlib import Path

# user (maybe none), then the password: anything up to the last @ before a space, / and @ included (a
# generated password may hold them); an @ later in a URL's path is masked too, rather than a password shown
PASSWORD_IN_URL = re.compile(r"(://[^/:@\s]*:)\S+@")
# a token given as the user of an https git remote: https://TOKEN@github.com/org/repo.git
TOKEN_AS_USER = re.compile(r"(https?://)[^/:@\s]+@")


def redact(text: str) -> str:
    """Hides the password or token of any URL in text (a database URL given as a parameter, a git remote's)."""
    return TOKEN_AS_USER.sub(r"\1***@", PASSWORD_IN_URL.sub(r"\1***@", text))


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
