"""Metric points written into an MLflow SQL store in bulk, as MLflow itself would write them.

MLflow's ``log_batch`` builds an ORM object per point, reads the run's latest metrics
back, and flushes row by row: about 80 µs a point on SQLite on a 2-core machine, which
caps an upload at some 12,000 points a second. For a store MLflow keeps in SQLite or
PostgreSQL, :class:`BulkMetrics` writes the same rows with one multi-row statement per
table, in one transaction:

- every point into ``metrics``; a point already there (same key, step, time and value)
  is skipped, as MLflow skips it, so an upload sent twice stores each point once;
- each key's newest point into ``latest_metrics``, replacing the row there only when the
  new one is newer by (step, timestamp, value), MLflow's own rule; nothing is read back.

The tables are MLflow's own SQLAlchemy definitions, so the rows are the ones MLflow writes
and reads. It is used only where those tables have the columns it expects; elsewhere, or
with ``EXPERIMENTS_BULK_METRICS=0`` in the environment, points go through ``log_batch``.
Params, tags, artifacts and statuses always go through MLflow's client.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

MAX_FLOAT = 1.7976931348623157e308  # how MLflow stores an infinite value
COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")  # of a point's row
DIALECTS = ("sqlite", "postgresql")


# What a database says when its tables are not the ones this was written for (another
# MLflow schema): not an outage, so not retried; the uploader goes back to log_batch.
SCHEMA_MARKS = (
    "no such column",
    "no such table",
    "has no column named",
    "undefinedcolumn",
    "undefinedtable",
    "does not exist",
)


class SchemaMismatch(Exception):
    """The store's tables are not what the bulk path writes: use MLflow's log_batch."""


class BulkMetrics:
    """Writes metric points of runs into one SQL store.

    Use :meth:`for_uri`, which returns None where this does not apply.
    """

    def __init__(self, engine: Any, dialect: str) -> None:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun

        self.engine = engine
        self.dialect = dialect
        self.metrics = SqlMetric.__table__
        self.latest = SqlLatestMetric.__table__
        self.runs = SqlRun.__table__

    @classmethod
    def for_uri(cls, uri: str) -> Optional[BulkMetrics]:
        """A writer for the store at ``uri``, or None: not a SQLite or PostgreSQL store,
        tables not as expected, or turned off with ``EXPERIMENTS_BULK_METRICS=0``."""
        if os.environ.get("EXPERIMENTS_BULK_METRICS", "1") == "0":
            return None
        dialect = uri.split(":", 1)[0].split("+", 1)[0]
        if dialect not in DIALECTS:
            return None
        try:
            from mlflow.store.db.utils import create_sqlalchemy_engine
            from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric

            for table in (SqlMetric.__table__, SqlLatestMetric.__table__):
                if not set(COLUMNS) <= set(table.columns.keys()):
                    return None
            engine = create_sqlalchemy_engine(uri)
        except Exception:  # a version of MLflow this was not written for: use log_batch
            return None
        return cls(engine, dialect)

    def write(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> None:
        """Store ``points`` (key, value, timestamp, step) of run ``run_id`` in one transaction.

        Points are checked as MLflow's ``log_batch`` checks them (the key's name and length,
        the value, step and time), once per key: a run stored here would be accepted by any
        store.

        Raises:
            MlflowException: the run does not exist or is deleted, or a point is refused
                (refusals), or the database is busy or unreachable (worth retrying), as
                MLflow would.
            SchemaMismatch: the tables are not what this writes (another MLflow schema).
        """
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import (
            BAD_REQUEST,
            INVALID_PARAMETER_VALUE,
            RESOURCE_DOES_NOT_EXIST,
            TEMPORARILY_UNAVAILABLE,
        )
        from mlflow.utils.validation import _validate_metric
        from sqlalchemy import exc, select

        checked: set[str] = set()
        for point in points:
            if point[0] not in checked:  # the journal's values are floats, its steps ints
                _validate_metric(*point)
                checked.add(point[0])
        rows = [_row(run_id, *point) for point in points]
        if not rows:
            return
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:
            current = newest.get(row["key"])
            if current is None or _order(row) > _order(current):
                newest[row["key"]] = row
        try:
            with self.engine.begin() as connection:
                stage = connection.execute(
                    select(self.runs.c.lifecycle_stage).where(self.runs.c.run_uuid == run_id)
                ).scalar()
                if stage is None:
                    raise MlflowException(
                        f"Run with id={run_id} not found", error_code=RESOURCE_DOES_NOT_EXIST
                    )
                if stage != "active":
                    raise MlflowException(
                        f"The run {run_id} must be in the 'active' state. "
                        f"Current state is {stage}.",
                        error_code=INVALID_PARAMETER_VALUE,
                    )
                self._insert_points(connection, rows)
                connection.execute(self._upsert_latest(), list(newest.values()))
        except (exc.OperationalError, exc.ProgrammingError) as error:
            text = str(error)
            if any(mark in text.lower() for mark in SCHEMA_MARKS):
                raise SchemaMismatch(f"metric points: {text.splitlines()[0][:200]}") from error
            if isinstance(error, exc.ProgrammingError):
                raise MlflowException(text, error_code=BAD_REQUEST) from error
            # locked, or the connection went: worth retrying
            raise MlflowException(text, error_code=TEMPORARILY_UNAVAILABLE) from error
        except exc.SQLAlchemyError as error:
            raise MlflowException(str(error), error_code=BAD_REQUEST) from error

    def _insert(self, table: Any) -> Any:
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table)

    def _insert_points(self, connection: Any, rows: list[dict[str, Any]]) -> None:
        if self.dialect != "sqlite":
            connection.execute(self._insert(self.metrics).on_conflict_do_nothing(), rows)
            return
        # SQLite: the driver's own executemany, without SQLAlchemy's per-row processing
        # (a third of the time); the statement is built from MLflow's table definition.
        sql = (
            f"INSERT INTO {self.metrics.name} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in COLUMNS)}) ON CONFLICT DO NOTHING"
        )
        connection.exec_driver_sql(sql, [tuple(row[name] for name in COLUMNS) for row in rows])

    def _upsert_latest(self) -> Any:
        statement = self._insert(self.latest)
        new, old = statement.excluded, self.latest.c
        newer = (
            (new.step > old.step)
            | ((new.step == old.step) & (new.timestamp > old.timestamp))
            | ((new.step == old.step) & (new.timestamp == old.timestamp) & (new.value > old.value))
        )
        return statement.on_conflict_do_update(
            index_elements=[old.key, old.run_uuid],
            set_={
                "value": new.value,
                "timestamp": new.timestamp,
                "step": new.step,
                "is_nan": new.is_nan,
            },
            where=newer,
        )


def _row(run_id: str, key: str, value: float, timestamp: int, step: int) -> dict[str, Any]:
    value = float(value)
    is_nan = math.isnan(value)
    if is_nan:
        value = 0.0
    elif math.isinf(value):
        value = MAX_FLOAT if value > 0 else -MAX_FLOAT
    return {
        "key": key,
        "value": value,
        "timestamp": int(timestamp),
        "step": int(step),
        "is_nan": is_nan,
        "run_uuid": run_id,
    }


def _order(row: dict[str, Any]) -> tuple[int, int, float]:
    return row["step"], row["timestamp"], row["value"]
