"""Reaching the MLflow store before any run is opened: fail in seconds, in one line, or not at all.

MLflow's own defaults are patient: an HTTP client retries a server that is down for about four
minutes, and an SQLite store it cannot open or that another process holds locked is retried for
about two. `reaching` checks the store up front with short limits instead and turns every
failure into a `StoreError` naming the URI and what to do; once the store answers, the run
itself writes with MLflow's patient defaults again, so a short blip of the server mid-run is
ridden out rather than lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from polyexp.errors import UserError

# The HTTP client's limits while reaching the store (a value the user set wins): a closed port
# fails in ~2 s, a server that accepts and never answers in ~8 s (measured, DESIGN.md).
FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
}
SQLITE_BUSY_SECONDS = 5.0  # how long to wait for another process's lock on an SQLite store
SERVER_HINT = "for many writers use a tracking server (README: Sharing a tracking server)"
LOCKED = "another process holds the SQLite database's write lock"


class StoreError(UserError):
    """The tracking store cannot be used; the message is one line naming the URI."""


# user:password@ in any URI, and password=... in a query string or a DSN (libpq's key=value).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@\s]*):[^/\s]*@")
_PASSWORD_KEY = re.compile(r"(?P<key>\b(?:password|passwd|pwd)=)[^&\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """A URI, or any text that may hold one (an MLflow, SQLAlchemy or driver error), with every
    password hidden: everything polyexp prints about a store goes through here."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _PASSWORD_KEY.sub(lambda m: f"{m['key']}***", text)


def on_disk(uri: str) -> str:
    """A store's URI as polyexp writes it into a file (a run's journal, a sweep's parent.json):
    without its password, since run folders are shared and copied."""
    return redact(uri)


def from_disk(written: str, where: Path) -> str:
    """The URI to reach a store `written` by on_disk into the file `where`: as written when it
    had no password, else MLFLOW_TRACKING_URI when that names the same store. Raises StoreError
    (one line) when the password is missing."""
    if "***" not in written:
        return written
    current = os.environ.get("MLFLOW_TRACKING_URI", "")
    if redact(current) == written:
        return current
    raise StoreError(
        f"{where} names the store {written} without its password (polyexp never writes one); "
        "set MLFLOW_TRACKING_URI to that store's full URI"
    )


def redact_tracebacks() -> None:
    """A traceback this process does not catch is printed through redact too: the error it
    ends with may echo a store's URI (the commands call this first)."""

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, error, trace))))

    sys.excepthook = hook


def describe(uri: str) -> str:
    """How the user named the store: the variable they set, or polyexp's default."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return f"MLFLOW_TRACKING_URI={redact(uri)}"
    return f"the default store {redact(uri)}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


# What the HTTP client's long messages boil down to.
_CAUSES = (
    ("Connection refused", "connection refused: nothing listens there"),
    ("timed out", "no answer within the time limit"),
    ("timeout expired", "no answer within the time limit"),
    ("Name or service not known", "unknown host"),
    ("Temporary failure in name resolution", "unknown host"),
    ("database is locked", LOCKED),
)


def first_line(error: BaseException) -> str:
    """The gist of an error in under 200 characters."""
    text = str(error)
    for needle, cause in _CAUSES:
        if needle in text:
            return cause
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact(lines[0])[:200] if lines else type(error).__name__


def why_no_answer(uri: str) -> str:
    """Why a call to the store at `uri` has not returned, asked in at most ~2 s: SQLite waits on
    another process's lock without a word, and MLflow's HTTP client retries a dead server for
    minutes."""
    if sqlite_locked(uri):
        return LOCKED
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2):
                pass
        except Exception as error:  # refused, timed out, unknown host, an HTTP error
            return first_line(getattr(error, "reason", None) or error)
    return "no answer"


def sqlite_locked(uri: str) -> bool:
    """Whether another process holds the write lock of the SQLite store at `uri` now (asked
    without waiting: a write transaction begun and rolled back at once)."""
    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return False
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=0, isolation_level=None)
        ) as c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        return "locked" in str(error) or "busy" in str(error)
    return False


@contextmanager
def fast_http() -> Iterator[None]:
    """MLflow's HTTP client with FAST_HTTP's limits for the span of the block (it reads them on
    every request); variables the user set are left alone."""
    added = {k: v for k, v in FAST_HTTP.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def check_sqlite(uri: str, db: Path) -> None:
    """Refuses, in one line, an SQLite store that MLflow would retry for minutes: a folder that
    cannot be made, a file this user cannot read and write, a database another process holds
    locked (after SQLITE_BUSY_SECONDS), a file that is not a database."""
    name = describe(uri)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(
            f"{name}: cannot create the store's folder {db.parent} ({error.strerror}); "
            "choose a path in a writable folder"
        ) from None
    if not os.access(db.parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"{name}: the folder {db.parent} is not writable by this user; "
            "choose a writable folder or fix its permissions"
        )
    if not db.exists():
        return  # MLflow creates it
    if not db.is_file() or not os.access(db, os.R_OK | os.W_OK):
        raise StoreError(
            f"{name}: {db} is not a file this user can read and write; "
            "fix its permissions or choose another store"
        )
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=SQLITE_BUSY_SECONDS) as c:
            names = [row[0] for row in c.execute("SELECT name FROM sqlite_master")]
    except sqlite3.Error as error:
        if "locked" in str(error) or "busy" in str(error):
            raise StoreError(
                f"{name}: the database is locked by another process (waited "
                f"{SQLITE_BUSY_SECONDS:g} s); end that process or, {SERVER_HINT}"
            ) from None
        raise StoreError(f"{name}: cannot open the database ({first_line(error)})") from None
    half = [n for n in names if n.startswith("_alembic_tmp_")]
    if half:
        raise StoreError(
            f"{name}: the database is half-migrated (table {half[0]}: an earlier creation or "
            f"upgrade was cut short); move {db} away and run again, or repair it with: "
            f"mlflow db upgrade sqlite:///{db}"
        )


@contextmanager
def created_once(uri: str) -> Iterator[None]:
    """Around the first use of an SQLite store: an exclusive file lock beside the database
    (`<db>.lock`), so two processes opening a fresh store at once never race in MLflow's
    schema migration; the second waits for the first, then finds the store made."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    import fcntl

    with (db.parent / f"{db.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def reaching(uri: str) -> Iterator[None]:
    """`with reaching(uri): <the first calls to the store>`: checks an SQLite store's file first,
    gives an HTTP client short limits, and turns any failure into a StoreError."""
    db = sqlite_path(uri)
    if db is not None:
        check_sqlite(uri, db)
    else:
        check_database(uri)
    try:
        with fast_http():
            yield
    except StoreError:
        raise
    except Exception as error:
        what = "cannot reach the tracking server" if uri.startswith("http") else "cannot open it"
        raise StoreError(
            f"{describe(uri)}: {what} ({first_line(error)}); start the server or set "
            "MLFLOW_TRACKING_URI to a store that exists (README: Sharing a tracking server)"
        ) from None


# --- a database server, an experiment, its artifact folder --------------------------------------

DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
CONNECT_SECONDS = 5  # how long to wait for a database server to accept a connection


def check_database(uri: str) -> None:
    """Refuses, within CONNECT_SECONDS and in one line without its password, a database server
    that does not answer: MLflow itself retries one for ~100 s, logging every attempt."""
    if not uri.split(":", 1)[0].startswith(DATABASE_SCHEMES):
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    timeout = (
        {"connect_timeout": CONNECT_SECONDS} if uri.startswith(("postgresql", "mysql")) else {}
    )
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=timeout)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as error:
        cause = getattr(error, "orig", None) or error  # the driver's own message
        raise StoreError(
            f"{describe(uri)}: cannot reach the database ({first_line(cause)}); start it or set "
            "MLFLOW_TRACKING_URI to a store that exists (README: Sharing a tracking server)"
        ) from None


def local_folder(location: str) -> Path | None:
    """An artifact location on this machine's filesystem as a path; None for a remote one."""
    if location.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(location).path))
    return Path(location) if "://" not in location and ":" not in location[:3] else None


def check_experiment(uri: str, name: str, experiment_id: str, stage: str, location: str) -> None:
    """Refuses, before a run exists, an experiment MLflow would not take a run in (deleted) or
    whose artifact folder on this machine this user cannot write."""
    if stage == "deleted":
        raise StoreError(
            f"{describe(uri)}: the experiment {name!r} (id {experiment_id}) is deleted; restore "
            f"it with: mlflow experiments restore --experiment-id {experiment_id} (with "
            "MLFLOW_TRACKING_URI set to this store), or set MLFLOW_EXPERIMENT_NAME to another name"
        )
    folder = local_folder(location)
    if folder is None:
        return
    existing = folder
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent  # MLflow makes the missing folders
        writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    except OSError:  # a folder on the way this user cannot enter
        writable = False
    if not writable:
        raise StoreError(
            f"{describe(uri)}: the artifact folder {folder} of experiment {name!r} is not "
            "writable by this user; fix its permissions or choose another store"
        )
