"""`polyexp-rerun RUN_ID`: run a recorded run again from its MLflow record, and say whether the
loss history came out bit for bit the same. RUN_ID may be any unique prefix of the id.

The record alone is enough: the run's `config.yaml` artifact is the resolved composed config
and `overrides.yaml` its command-line overrides. The rerun is a new run in the same store
(`MLFLOW_TRACKING_URI`) and, unless `MLFLOW_EXPERIMENT_NAME` says otherwise, the same
experiment, tagged `polyexp.rerun_of` = the source run's id. Exit status: 0 identical,
1 different, 2 when the run cannot be rerun (unknown id, not a finished polyexp run, bad store).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from polyexp.errors import UserError
from polyexp.record import store, tracking

PROG = "polyexp-rerun"
RERUN_OF = "polyexp.rerun_of"  # the tag that links a rerun to its source run


class CannotRerun(Exception):
    """Why a run cannot be rerun; one line for the user."""


def recorded_config(client: MlflowClient, run_id: str) -> tuple[DictConfig, list[str]]:
    """The run's resolved config and its overrides, from its `config.yaml`/`overrides.yaml`,
    each checked by `checked_record` before anything uses it."""
    with tempfile.TemporaryDirectory() as tmp:
        texts = []
        for name in ("config.yaml", "overrides.yaml"):
            try:
                path = client.download_artifacts(run_id, name, tmp)
                texts.append(Path(path).read_text(encoding="utf-8"))
            except (MlflowException, OSError, UnicodeDecodeError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise CannotRerun(
                    f"run {run_id} has no readable {name} artifact ({store.redact(reason)}); "
                    "only a run recorded by polyexp can be rerun"
                ) from None
    return checked_record(run_id, *texts)


def checked_record(
    run_id: str, config_text: str, overrides_text: str
) -> tuple[DictConfig, list[str]]:
    """The one check of a recorded config before a rerun. A record is data anyone who can
    reach the store may have written, so it is read as plain YAML (no tags that build Python
    objects), never resolved (an interpolation such as ${oc.env:...} would read the rerunner's
    environment or files into the shared store), and holds only keys polyexp knows; anything
    else is CannotRerun, in one line."""
    cfg = _plain_yaml(run_id, "config.yaml", config_text)
    overrides = _plain_yaml(run_id, "overrides.yaml", overrides_text)
    if not isinstance(cfg, dict):
        raise CannotRerun(f"run {run_id}: config.yaml does not hold a config mapping")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise CannotRerun(f"run {run_id}: overrides.yaml does not hold a list of overrides")
    for where, value in [*_leaves(cfg), *((f"overrides[{i}]", o) for i, o in enumerate(overrides))]:
        if isinstance(value, str) and "${" in value:
            raise CannotRerun(
                f"run {run_id}: its record sets {where} to an interpolation ({value[:80]!r}); "
                "a recorded config is data and is never resolved (it could read this machine's "
                "environment or files into the store)"
            )
    unknown = _unknown_key(cfg, _defaults())
    if unknown:
        raise CannotRerun(
            f"run {run_id}: config.yaml has the key {unknown!r}, which polyexp does not know; "
            "only a config recorded by polyexp can be rerun"
        )
    return OmegaConf.create(cfg), overrides


def _plain_yaml(run_id: str, name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = " ".join(str(getattr(error, "problem", None) or error).split())[:120]
        raise CannotRerun(
            f"run {run_id}: {name} is not plain YAML ({problem}); a recorded config is read as "
            "data only, so tags that build Python objects are refused"
        ) from None


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every key and value in a tree of mappings and lists; a key is
    itself checked, as the value at its own path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            yield path, str(key)
            yield from _leaves(value, f"{path}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{prefix.removesuffix('.')}[{i}].")
    else:
        yield prefix.removesuffix("."), tree


@functools.cache
def _defaults() -> dict[str, Any]:
    """polyexp's default config: the top-level keys and the nodes it knows."""
    import polyexp

    tree = OmegaConf.to_container(polyexp.compose([]), resolve=False)
    assert isinstance(tree, dict)
    return {str(k): v for k, v in tree.items()}


def _unknown_key(recorded: dict[str, Any], known: dict[str, Any], prefix: str = "") -> str | None:
    """The first key of `recorded` that `known` has not; an option (a node with a _target_) is
    left to polyexp.options.build, which knows its fields and refuses any other key."""
    for key, value in recorded.items():
        if key not in known:
            return f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(known[key], dict) and "_target_" not in value:
            found = _unknown_key(value, known[key], f"{prefix}{key}.")
            if found:
                return found
    return None


def resolve_run_id(client: MlflowClient, given: str) -> str:
    """The full id of the one run whose id is `given` or starts with it (as git takes a unique
    prefix of a commit); CannotRerun names an unknown or ambiguous prefix."""
    try:
        return client.get_run(given).info.run_id
    except MlflowException:
        pass
    prefix = given.lower()
    matches = []
    if re.fullmatch(r"[0-9a-f]+", prefix):  # run ids are hex: nothing for LIKE to misread
        experiments, token = [], None
        while True:  # every experiment, deleted ones too (as get_run finds their runs)
            page = client.search_experiments(view_type=ViewType.ALL, page_token=token)
            experiments += [e.experiment_id for e in page]
            if not (token := page.token):
                break
        if experiments:
            found = client.search_runs(
                experiments,
                f"attributes.run_id LIKE '{prefix}%'",
                run_view_type=ViewType.ALL,
                max_results=4,
            )
            matches = sorted(r.info.run_id for r in found)
    if not matches:
        raise CannotRerun(
            f"no run id is or starts with {given!r} in the store "
            f"{store.redact(tracking.tracking_uri())} (a run in another store: set "
            "MLFLOW_TRACKING_URI)"
        )
    if len(matches) > 1:
        shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
        raise CannotRerun(
            f"the run id prefix {given!r} is ambiguous: runs {shown} all start with it; "
            "give more of the id"
        )
    return matches[0]


def source_run(client: MlflowClient, run_id: str) -> Run:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise CannotRerun(
            f"no run {run_id!r} in the store {store.redact(tracking.tracking_uri())} "
            "(set MLFLOW_TRACKING_URI)"
        ) from None
    if run.info.status != "FINISHED":
        raise CannotRerun(
            f"run {run_id} ended {run.info.status}; only a FINISHED run has a whole history "
            "to compare against"
        )
    return run


def open_store() -> MlflowClient:
    uri = tracking.tracking_uri()
    db = store.sqlite_path(uri)
    if db is not None and not db.is_file():  # MLflow would quietly create an empty one
        raise CannotRerun(f"no MLflow store at {db} (set MLFLOW_TRACKING_URI)")
    with store.reaching(uri):  # a server or database that is down: seconds, one line
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


def first_difference(recorded: np.ndarray, rerun: np.ndarray) -> str:
    if len(recorded) != len(rerun):
        return f"{len(recorded)} recorded steps, {len(rerun)} rerun"
    step = int(np.flatnonzero(recorded.view(np.uint64) != rerun.view(np.uint64))[0])
    return f"first at step {step}: recorded {float(recorded[step])!r}, rerun {float(rerun[step])!r}"


def environment_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The source run's provenance tags (versions, threads, device, commit) that differ now."""
    keys = [k for k in sorted(before) if k.startswith(("versions.", "threads.", "git."))]
    keys += [k for k in ("polyexp.version", "device_name") if k in before]
    return [f"{k} {before[k]} -> {after.get(k, '-')}" for k in keys if before[k] != after.get(k)]


def rerun(run_id: str) -> tuple[bool, str]:
    """Reruns `run_id` as a new run; returns (bit-identical?, a one-line verdict)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files
    client = open_store()
    run_id = resolve_run_id(client, run_id)
    source = source_run(client, run_id)
    cfg, overrides = recorded_config(client, run_id)
    from polyexp.record.runner import run  # after the checks, so a bad id answers fast

    # The rerun lands beside its source, unless MLFLOW_EXPERIMENT_NAME says otherwise.
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or (
        client.get_experiment(source.info.experiment_id).name
    )
    try:
        result = run(cfg, overrides, tags={RERUN_OF: run_id}, experiment=experiment)
    except UserError as error:
        raise CannotRerun(f"run {run_id} cannot run here: {error}") from None

    new = client.get_run(result.run_id)
    recorded = tracking.loss_history(client, run_id)
    again = tracking.loss_history(client, result.run_id)
    same_losses = len(recorded) == len(again) and recorded.tobytes() == again.tobytes()
    names = list(result.coefficients)  # the model's own parameters
    before = np.array([source.data.metrics.get(k, np.nan) for k in names])
    after = np.array([new.data.metrics[k] for k in names])
    same_coefficients = before.tobytes() == after.tobytes()
    changes = environment_changes(source.data.tags, new.data.tags)
    note = f"; environment differs: {', '.join(changes)}" if changes else ""
    if same_losses and same_coefficients:
        verdict = (
            f"{PROG}: identical: run {result.run_id} repeats run {run_id} bit for bit "
            f"({len(again)} losses and the final coefficients){note}"
        )
    elif same_losses:
        verdict = (
            f"{PROG}: DIFFERENT: run {result.run_id} repeats run {run_id}'s {len(again)} "
            f"losses but not its final coefficients{note}"
        )
    else:
        verdict = (
            f"{PROG}: DIFFERENT: run {result.run_id} departs from run {run_id}'s loss "
            f"history ({first_difference(recorded, again)}){note}"
        )
    return same_losses and same_coefficients, verdict


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rerun a recorded polyexp run from its MLflow record (MLFLOW_TRACKING_URI) "
        "and report whether the loss history is bit-identical. Exit status: 0 identical, "
        "1 different, 2 cannot rerun.",
    )
    parser.add_argument(
        "run_id", metavar="RUN_ID", help="the MLflow run id to rerun, or any unique prefix of it"
    )
    args = parser.parse_args(argv)
    store.redact_tracebacks()
    try:
        identical, verdict = rerun(args.run_id)
    except (CannotRerun, UserError) as error:
        print(f"{PROG}: error: {store.redact(str(error))}", file=sys.stderr)
        sys.exit(2)
    print(verdict)
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
