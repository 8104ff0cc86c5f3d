"""The one base class for errors meant for the user: the message is one line saying what is
wrong and what to do, printed by the command line without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a config value, the store, the outputs folder); one line."""


class ConfigError(UserError, ValueError):
    """A config value that cannot run; the message names the key and what is allowed."""
