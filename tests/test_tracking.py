"""The record path against a real SQLite store: journal -> recording process -> MLflow.

Runs are opened with ``live.open_run`` exactly as the runner does (so through this test
process's recording process), and read back with a plain ``MlflowClient``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from experiments.record import journal, live, liveness, marks
from experiments.record.journal import Header, Writer
from experiments.record.store import upload
from experiments.record.store.tracker import Tracker
from experiments.record.uris import redact
from tests.conftest import runs_of

SETTINGS = live.Settings(retry_s=2.0, heartbeat_s=30.0)


class CountingClient(MlflowClient):
    """A real MLflow client that counts its log_batch calls and their sizes."""

    calls: list[int] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        CountingClient.calls.append(len(metrics) + len(params) + len(tags))
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)


def open_run(
    store_uri: str | None,
    directory: Path,
    experiment: str,
    name: str = "run",
    settings: live.Settings = SETTINGS,
    **header,
) -> live.LiveRun:
    directory.mkdir(parents=True, exist_ok=True)
    uri = store_uri or "sqlite:////nowhere/mlflow.db"
    head = Header(tracking_uri=uri, experiment=experiment, run_name=name, **header)
    store = live.Store(store_uri, "tracking.uri") if store_uri else None
    recording = live.open_run(directory, head, {"task": "test"}, store, settings)
    recording.started()
    return recording


def test_metric_points_are_sent_in_batches(store_uri, tmp_path) -> None:
    path = tmp_path / journal.NAME
    writer = Writer(path, Header(tracking_uri=store_uri, experiment="batching", run_name="b"))
    for step in range(2500):
        writer.append(
            {"type": "metrics", "step": step, "values": {"loss": 1.0 / (step + 1), "x": step}}
        )
    writer.append({"type": "end", "status": "FINISHED", "error": None})
    writer.close()
    client = CountingClient(tracking_uri=store_uri)
    CountingClient.calls = []
    uploader = upload.deliver(client, path, store_uri)
    assert sum(CountingClient.calls) == 5000
    assert max(CountingClient.calls) <= 1000
    assert len(CountingClient.calls) <= 6  # 5,000 points in about 1,000 a call
    loss = client.get_metric_history(uploader.run_id, "loss")
    assert [m.step for m in loss] == list(range(2500))
    assert loss[-1].value == pytest.approx(1 / 2500)


def test_statuses_and_reasons_reach_the_store(store_uri, tmp_path) -> None:
    for name, status, error in [
        ("ok", "FINISHED", None),
        ("bad", "FAILED", "diverged at step 3"),
        ("stopped", "KILLED", "terminated (SIGTERM)"),
    ]:
        recording = open_run(store_uri, tmp_path / name, "statuses", name)
        assert recording.close(status, error).recorded
    runs = {run.info.run_name: run for run in runs_of(MlflowClient(store_uri), "statuses")}
    assert {name: run.info.status for name, run in runs.items()} == {
        "ok": "FINISHED",
        "bad": "FAILED",
        "stopped": "KILLED",
    }
    assert runs["bad"].data.tags["error"] == "diverged at step 3"
    assert runs["stopped"].data.tags["error"] == "terminated (SIGTERM)"
    assert "error" not in runs["ok"].data.tags
    assert all(run.info.end_time for run in runs.values())
    tags = runs["ok"].data.tags
    assert tags["host"] and tags["pid"] == str(os.getpid()) and tags["heartbeat"]
    assert tags["journal.id"] == journal.read_header(tmp_path / "ok" / journal.NAME).journal_id


def test_long_values_are_cut_not_refused_and_files_become_artifacts(store_uri, tmp_path) -> None:
    recording = open_run(store_uri, tmp_path / "run", "params")
    recording.recorder.log_params({"long": "x" * 10_000, "none": None})
    recording.recorder.set_tags({"note": "y" * 10_000})
    recording.recorder.log_text("hello\n", "notes/hello.txt")
    (tmp_path / "elsewhere.txt").write_text("outside the run directory")
    recording.recorder.log_artifact(tmp_path / "elsewhere.txt")
    assert recording.close("FINISHED").recorded
    client = MlflowClient(store_uri)
    run = client.get_run(recording.run_id)
    assert len(run.data.params["long"]) <= 6000 and run.data.params["long"].endswith("(truncated)")
    assert run.data.params["none"] == "null"
    assert len(run.data.tags["note"]) <= 8000
    assert {a.path for a in client.list_artifacts(recording.run_id)} == {"notes", "elsewhere.txt"}
    assert [a.path for a in client.list_artifacts(recording.run_id, "notes")] == ["notes/hello.txt"]


def test_uploading_a_journal_again_duplicates_nothing(store_uri, tmp_path) -> None:
    tracker = Tracker(store_uri)
    recording = open_run(store_uri, tmp_path / "run", "replay")
    recording.recorder.log_params({"a": 1})
    for step in range(1500):
        recording.recorder.log_metrics({"loss": float(step)}, step=step)
    recording.recorder.log_text("x", "x.txt")
    assert recording.close("FINISHED").recorded
    path = recording.journal
    marks.state_path(path).unlink()  # as if the upload had been cut before its mark was saved
    again = upload.deliver(tracker.client, path, tracker.key)
    assert again.run_id == recording.run_id
    assert again.counts.points == 1500  # everything was sent again...
    client = MlflowClient(store_uri)
    history = client.get_metric_history(recording.run_id, "loss")
    assert len(history) == 1500  # ...and the store kept each point once
    assert client.get_run(recording.run_id).data.params == {"a": "1"}
    assert [a.path for a in client.list_artifacts(recording.run_id)] == ["x.txt"]
    assert len(runs_of(client, "replay")) == 1


def test_a_run_kept_offline_is_created_by_its_upload_under_its_parent(store_uri, tmp_path) -> None:
    parent = open_run(None, tmp_path / "sweep", "offline", "sweep a,b")
    parent_id = journal.read_header(parent.journal).journal_id
    child = open_run(None, tmp_path / "sweep" / "0", "offline", "a", parent_journal=parent_id)
    child.recorder.log_metrics({"loss": 1.0}, step=0)
    assert child.close("FINISHED") == live.Delivery(child.journal, recorded=False, offline=True)
    parent.close("FINISHED")
    client = MlflowClient(store_uri)
    assert client.get_experiment_by_name("offline") is None  # nothing reached the store

    tracker = Tracker(store_uri)
    upload.deliver(tracker.client, parent.journal, tracker.key)
    marks.state_path(child.journal).write_text("{}")  # a mark for no store: start over
    first = upload.deliver(tracker.client, child.journal, tracker.key)
    marks.state_path(child.journal).unlink()  # cut short before its mark was saved
    second = upload.deliver(tracker.client, child.journal, tracker.key)
    assert first.run_id == second.run_id  # found again by its journal id, not created twice
    runs = {run.info.run_name: run for run in runs_of(client, "offline")}
    assert set(runs) == {"sweep a,b", "a"}
    assert runs["a"].data.tags["mlflow.parentRunId"] == runs["sweep a,b"].info.run_id
    assert runs["a"].data.tags["task"] == "test"
    assert runs["a"].info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(first.run_id, "loss")] == [1.0]


def test_a_record_the_store_refuses_keeps_the_run_going_and_says_so(store_uri, tmp_path) -> None:
    recording = open_run(store_uri, tmp_path / "run", "refused")
    recording.recorder.log_params({"lr": "0.1"})
    recording.recorder.log_params({"lr": "0.2"})  # MLflow refuses to change a param
    recording.recorder.log_metrics({"loss": 1.0}, step=0)  # the task goes on
    delivery = recording.close("FINISHED")
    assert not delivery.recorded
    assert "refused a record" in delivery.reason and "lr" in delivery.reason
    assert journal.ended(recording.journal)  # everything is still in the journal


def test_passwords_stay_out_of_journals(workdir, monkeypatch) -> None:
    # A run of the command with a password in its tracking URI, kept offline (no server
    # needed): its journal and every file of its run go without the password.
    from experiments.command import app, exits

    secret = "s3cret-5b07"
    uri = f"http://alice:{secret}@127.0.0.1:9/mlflow"
    args = ["experiments", f"tracking.uri={uri}", "tracking.offline=true", "task.steps=3"]
    monkeypatch.setattr("sys.argv", args)
    assert exits.invoke(app.hydra_main) == 0
    (path,) = journal.find([workdir / "outputs" / "runs"])
    assert (
        journal.read_header(path).tracking_uri == redact(uri) == "http://alice@127.0.0.1:9/mlflow"
    )
    records = list(journal.records(path))
    assert records[-1]["type"] == "end"  # the whole run, params, tags and artifacts included
    hydra_own = path.parent / ".hydra"  # Hydra's record of the command line keeps it
    files = [f for f in path.parent.rglob("*") if f.is_file() and hydra_own not in f.parents]
    assert {f.name for f in files} >= {path.name, "config.yaml", "overrides.yaml"}
    for file in files:
        assert secret not in file.read_text(errors="replace"), file


def test_a_running_run_beats_while_the_task_is_silent(store_uri, tmp_path) -> None:
    settings = live.Settings(retry_s=2.0, heartbeat_s=0.5)
    recording = open_run(store_uri, tmp_path, "beats", "quiet", settings)
    client = MlflowClient(store_uri)
    first = liveness.parse_heartbeat(client.get_run(recording.run_id).data.tags["heartbeat"])
    time.sleep(2.5)  # the task records nothing meanwhile
    later = liveness.parse_heartbeat(client.get_run(recording.run_id).data.tags["heartbeat"])
    assert later - first >= 1000  # the recording process beat for it (to the second)
    recording.close("FINISHED")


def test_the_same_config_run_again_in_its_directory_links_to_the_first(store_uri, tmp_path):
    from experiments import runner
    from tests.conftest import compose_config

    cfg = compose_config(["task.steps=2", f"tracking.uri={store_uri}"])
    first = runner.execute(cfg, output_dir=tmp_path / "job")
    second = runner.execute(cfg, output_dir=tmp_path / "job")  # e.g. a requeued Slurm job
    other = runner.execute(
        compose_config(["task.steps=3", f"tracking.uri={store_uri}"]), output_dir=tmp_path / "job"
    )
    client = MlflowClient(store_uri)
    assert client.get_run(second.run_id).data.tags["retry_of"] == first.run_id
    assert "retry_of" not in client.get_run(other.run_id).data.tags
    assert [p.name for p in journal.find([tmp_path / "job"])] == [
        "journal-2.jsonl",
        "journal-3.jsonl",
        "journal.jsonl",
    ]


SILENT_DATABASE = """
import socket, sys, time
from experiments.errors import ConfigError, StoreUnreachable
from experiments.record.store.tracker import Tracker

silent = socket.socket()  # accepts connections, never says a word: a hung database host
silent.bind(("127.0.0.1", 0))
silent.listen(8)
uri = f"postgresql+psycopg2://mlflow@127.0.0.1:{silent.getsockname()[1]}/mlflow"
started = time.monotonic()
try:
    Tracker(uri, timeout_s=2.0)
except (ConfigError, StoreUnreachable) as error:
    print(f"{time.monotonic() - started:.1f}", str(error).splitlines()[0])
"""


def test_a_database_that_does_not_answer_is_given_up_on_after_the_timeout(tmp_path) -> None:
    pytest.importorskip("psycopg2")
    done = subprocess.run(
        [sys.executable, "-c", SILENT_DATABASE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,  # without a bound, the connection attempt waits for ever
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, line = done.stdout.split(" ", 1)
    assert float(seconds) < 60, done.stdout
    assert line.strip().endswith("cannot open the tracking store: the request timed out"), line
