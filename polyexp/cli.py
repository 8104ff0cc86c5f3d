"""The `polyexp` command: Hydra composes the config, polyexp.record.runner.run does the rest."""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from polyexp import bounds
from polyexp.errors import UserError
from polyexp.record import store
from polyexp.sweeps import stopping, sweep

# Lines of Hydra's and OmegaConf's messages that add detail, not meaning.
_DETAIL = ("full_key:", "object_type=", "reference_type=", "See https://", "Config search path")


@hydra.main(version_base="1.3", config_path="pkg://polyexp.conf", config_name="config")
def _main(cfg: DictConfig) -> float:
    from polyexp.record.runner import run  # after composition, so `--help` stays fast

    overrides = list(HydraConfig.get().overrides.task)
    parent = sweep.current_parent()
    if parent is not None:  # a job of a multirun: a child run; a bad value fails this job only
        return sweep.run_job(cfg, overrides, parent)
    try:
        result = run(cfg, overrides)
    except UserError as error:
        sys.exit(f"polyexp: error: {error}")
    return result.final_loss  # what a sweeper (e.g. Optuna) minimises


def one_line(error: Exception) -> str:
    """A composition error from Hydra or OmegaConf as one line naming the key and the choices."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option} is not an option; choose from {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        return f"cannot parse the override {error.override!r}: {error.message.splitlines()[0]}"
    lines = [line.strip() for line in str(error).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(_DETAIL))


# Hydra's option (or any prefix argparse would take for it, e.g. `--experimental`).
_HYDRA_RERUN = "--experimental-rerun"
NO_HYDRA_RERUN = (
    "--experimental-rerun is not supported: it unpickles a file, which can run any code in it; "
    "rerun a recorded run from its MLflow record with: polyexp-rerun RUN_ID (any unique prefix)"
)


def asks_hydra_rerun(argv: list[str]) -> bool:
    """Whether Hydra would read `argv` as its `--experimental-rerun` (argparse takes prefixes)."""
    options = (arg.split("=", 1)[0] for arg in argv if arg.startswith("--"))
    return any(len(option) > 2 and _HYDRA_RERUN.startswith(option) for option in options)


def main() -> None:
    # SIGTERM (a scheduler's or `kill`'s stop) takes Ctrl-C's path: the run ends KILLED with
    # every step so far; a sweep's jobs wherever they run, then its parent (sweeps.stopping).
    try:
        bounds.check()  # the time limits in the environment, before any work
    except UserError as error:
        sys.exit(f"polyexp: error: {error}")
    stopping.install()
    store.redact_tracebacks()  # an error that echoes a store's URI never shows its password
    if asks_hydra_rerun(sys.argv[1:]):  # refused before Hydra can load the pickle
        sys.exit(f"polyexp: error: {NO_HYDRA_RERUN}")
    # Hydra prints composition errors over several lines; unless the user asked for Hydra's
    # full errors, let them through and print them in one line instead.
    condense = "HYDRA_FULL_ERROR" not in os.environ
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        with sweep.parents():  # a sweep's parent run is closed when this block ends, however
            _main()
    except KeyboardInterrupt as interrupt:
        # The run is already recorded as KILLED with every step computed so far, in the store
        # or, when closing it there was cut short (the store failed, a second Ctrl-C), in its
        # journal.
        from polyexp.record import journal

        kept = sorted(str(folder) for folder in journal.pending)
        where = f"; kept in {', '.join(kept)} until polyexp-sync uploads them" if kept else ""
        sys.exit(
            f"polyexp: interrupted by {str(interrupt) or 'Ctrl-C'}: runs in progress end "
            f"KILLED{where}"
        )
    except BaseException as error:
        cause = error.__cause__ if isinstance(error, sweep.SweepAborted) else error
        if isinstance(error, sweep.SweepAborted) and cause is None:  # from another process
            sys.exit(f"polyexp: error: {error}")
        line = explain(cause) if condense and isinstance(cause, Exception) else None
        if line is None:
            raise
        sys.exit(f"polyexp: error: {line}")


def explain(error: Exception) -> str | None:
    """One line for the errors a user can fix (a bad value, a store or folder polyexp cannot
    use); None for the rest, which keep their traceback."""
    if isinstance(error, HydraException | OmegaConfBaseException):
        return one_line(error)
    if isinstance(error, UserError):  # a job of a sweep refused its config or its store
        return str(error)
    if line := stopping.explain(error):  # a launcher's worker process died
        return line
    if isinstance(error, OSError) and error.filename:
        # Hydra could not make its run folder (a read-only outputs folder, a file in the way).
        return (
            f"cannot write {os.path.abspath(error.filename)} ({error.strerror}); the outputs "
            "folder (hydra.run.dir, hydra.sweep.dir) must be a writable folder"
        )
    return None
