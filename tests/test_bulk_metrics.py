"""Metric points written in bulk read back exactly as MLflow's own ``log_batch`` wrote them."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from experiments.record.store.bulk import BulkMetrics

# Out of order, repeated, NaN and infinite values, two keys, newest decided by step, then
# time, then value: what MLflow's "latest metric" rule has to get right.
POINTS = [
    ("loss", 1.0, 5, 3),
    ("loss", math.nan, 6, 3),
    ("loss", math.inf, 1, 9),
    ("loss", 2.0, 9, 1),
    ("loss", 1.0, 5, 3),  # the same point again
    ("loss", -math.inf, 2, 9),
    ("loss", 7.0, 2, 9),
    ("x", -0.5, 3, 0),
    ("x", 0.25, 3, 0),
]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple]:
    return sorted(
        (m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run_id, key)
    )


def test_points_and_latest_values_match_log_batch(store_uri) -> None:
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("bulk")
    by_mlflow = client.create_run(experiment).info.run_id
    in_bulk = client.create_run(experiment).info.run_id
    bulk = BulkMetrics.for_uri(store_uri)
    assert bulk is not None
    for chunk in (POINTS[:4], POINTS[4:], POINTS[:2]):  # the last chunk is a replay
        client.log_batch(by_mlflow, metrics=[Metric(*point) for point in chunk])
        bulk.write(in_bulk, chunk)
    for key in ("loss", "x"):
        assert history(client, in_bulk, key) == history(client, by_mlflow, key)
    assert len(history(client, in_bulk, "loss")) == 6  # the repeated point is stored once
    expected = client.get_run(by_mlflow).data.metrics
    assert client.get_run(in_bulk).data.metrics == expected == {"loss": 7.0, "x": 0.25}


def test_a_run_that_is_gone_or_deleted_is_refused_like_mlflow_refuses_it(store_uri) -> None:
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gone")
    bulk = BulkMetrics.for_uri(store_uri)
    with pytest.raises(MlflowException) as missing:
        bulk.write("0" * 32, POINTS[:1])
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    run_id = client.create_run(experiment).info.run_id
    client.delete_run(run_id)
    with pytest.raises(MlflowException) as deleted:
        bulk.write(run_id, POINTS[:1])
    assert deleted.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1:5000", "file:///tmp/mlruns", "databricks", "mysql://u@h/db"]
)
def test_only_sqlite_and_postgresql_stores_are_written_in_bulk(uri) -> None:
    assert BulkMetrics.for_uri(uri) is None


def test_it_can_be_turned_off(store_uri, monkeypatch) -> None:
    monkeypatch.setenv("EXPERIMENTS_BULK_METRICS", "0")
    assert BulkMetrics.for_uri(store_uri) is None


def test_a_point_mlflow_would_refuse_is_refused_alike(store_uri) -> None:
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("refused")
    by_mlflow = client.create_run(experiment).info.run_id
    in_bulk = client.create_run(experiment).info.run_id
    long_key = "k" * 251  # over MLflow's 250 characters, which PostgreSQL's column enforces
    with pytest.raises(MlflowException) as mlflow_says:
        client.log_batch(by_mlflow, metrics=[Metric(long_key, 1.0, 1, 0)])
    with pytest.raises(MlflowException) as bulk_says:
        BulkMetrics.for_uri(store_uri).write(in_bulk, [("ok", 1.0, 1, 0), (long_key, 1.0, 1, 0)])
    assert bulk_says.value.error_code == mlflow_says.value.error_code == "INVALID_PARAMETER_VALUE"
    assert client.get_run(in_bulk).data.metrics == {}  # nothing of the batch went in


def test_tables_of_another_schema_send_the_points_through_log_batch(store_uri, tmp_path) -> None:
    from sqlalchemy import table

    from experiments.record.journal import Header, Writer
    from experiments.record.store import upload
    from experiments.record.store.bulk import SchemaMismatch

    bulk = BulkMetrics.for_uri(store_uri)
    bulk.metrics = table("metrics_of_another_schema")  # as if MLflow had renamed its table
    client = MlflowClient(store_uri)
    run_id = client.create_run(client.create_experiment("schema")).info.run_id
    with pytest.raises(SchemaMismatch):  # not an outage: never retried
        bulk.write(run_id, POINTS[:1])
    path = tmp_path / "journal.jsonl"
    writer = Writer(path, Header(tracking_uri=store_uri, experiment="schema", run_name="s"))
    for step in range(30):
        writer.append({"type": "metrics", "step": step, "values": {"loss": 1.0 / (step + 1)}})
    writer.append({"type": "end", "status": "FINISHED", "error": None})
    writer.close()
    uploader = upload.deliver(client, path, store_uri, bulk=bulk)
    assert uploader.bulk is None and uploader.counts.points == 30
    assert [m.step for m in client.get_metric_history(uploader.run_id, "loss")] == list(range(30))
    assert client.get_run(uploader.run_id).info.status == "FINISHED"
