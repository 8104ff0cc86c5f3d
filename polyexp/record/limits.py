"""MLflow's limits on what a run holds, in one place: a value too long for them is cut to fit,
and the whole value is kept beside it, so every store (SQLite, PostgreSQL, a server) holds
the same record.

SQLite ignores the lengths MLflow's schema declares; PostgreSQL and MySQL refuse a longer
value with a traceback, and nothing is recorded. The limits: a run name 250 characters (the
`runs.name` column; MLflow has no constant for it), a param value MAX_PARAM_VAL_LENGTH, a tag
value MAX_TAG_VAL_LENGTH (mlflow.utils.validation). A cut run name is kept whole in the tag
`polyexp.run_name`; every cut value is kept whole in the artifact `full_values.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RUN_NAME_LENGTH = 250  # MLflow's SQL schema: runs.name is String(250)
FULL_NAME_TAG = "polyexp.run_name"  # the whole run name, when it was cut
FULL_VALUES = "full_values.json"  # the artifact holding every value that was cut, whole
MARK = "..."  # ends a cut value


def cut(value: str, limit: int) -> str:
    """`value` if it fits in `limit` characters, else its start and MARK in exactly `limit`."""
    return value if len(value) <= limit else value[: limit - len(MARK)] + MARK


@dataclass
class Fitted:
    """A run's name, params and tags cut to MLflow's limits, and the whole of each value cut."""

    run_name: str
    params: dict[str, str]
    tags: dict[str, str]
    whole: dict[str, str] = field(default_factory=dict)  # "run_name", "params.<k>", "tags.<k>"

    def keep(self, client: MlflowClient, run_id: str) -> None:
        """Logs the whole values that were cut as the run's FULL_VALUES artifact (if any)."""
        if self.whole:
            client.log_text(run_id, json.dumps(self.whole, indent=2) + "\n", FULL_VALUES)


def fit(run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> Fitted:
    """The run's name, params (as strings) and tags cut to MLflow's limits."""
    whole: dict[str, str] = {}

    def fitted(kind: str, key: str, value: str, limit: int) -> str:
        short = cut(value, limit)
        if short != value:
            whole[f"{kind}.{key}" if key else kind] = value
        return short

    name = fitted("run_name", "", run_name, RUN_NAME_LENGTH)
    tag_values = {k: fitted("tags", k, str(v), MAX_TAG_VAL_LENGTH) for k, v in tags.items()}
    if name != run_name:
        tag_values[FULL_NAME_TAG] = cut(run_name, MAX_TAG_VAL_LENGTH)
    params_values = {
        k: fitted("params", k, str(v), MAX_PARAM_VAL_LENGTH) for k, v in params.items()
    }
    return Fitted(name, params_values, tag_values, whole)
