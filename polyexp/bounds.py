"""The time limits a user sets in the environment, each a number of seconds (README: When the
store cannot be used, Interrupted). Read where they apply; checked by the commands before any
work, so a bad value is one line naming the variable, never a surprise mid-run."""

from __future__ import annotations

import math
import os

from polyexp.errors import UserError

STORE_TIMEOUT_ENV = "POLYEXP_STORE_TIMEOUT"  # a failing store is retried this long, then stops
HEARTBEAT_ENV = "POLYEXP_HEARTBEAT_TIMEOUT"  # a run of another host silent this long is gone
STOP_GRACE_ENV = "POLYEXP_STOP_GRACE"  # a stopped sweep waits this long for its jobs to end
DEFAULTS = {STORE_TIMEOUT_ENV: 30.0, HEARTBEAT_ENV: 600.0, STOP_GRACE_ENV: 20.0}


def seconds(name: str) -> float:
    """The limit `name` (one of DEFAULTS): its variable when set, else its default. Raises
    UserError (one line naming the variable) for anything but a finite number >= 0."""
    text = os.environ.get(name, "").strip()
    if not text:
        return DEFAULTS[name]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise UserError(
            f"{name}={text!r} is not a number of seconds; set a number >= 0 or unset it"
        )
    return value


def check() -> None:
    """Every limit read once: UserError for the first bad one."""
    for name in DEFAULTS:
        seconds(name)
