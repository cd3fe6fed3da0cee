"""The errors that mean bad input or state: reported as one clear message, never a traceback."""


class AlprError(Exception):
    """Base of every error whose message alone tells the user what to fix."""


class UsageError(AlprError, ValueError):
    """A flag or argument with a bad value; the message names it and what is allowed."""
