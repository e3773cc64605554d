"""Runs kept offline, and ``python -m experiments.sync``: uploads, idempotence, bad input.

The command line runs in this process (``cli.invoke`` and ``sync.main``, as ``python -m``
would call them); results are read back with a plain ``MlflowClient``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from experiments.command import app, exits
from experiments.record import journal, liveness, marks, sync
from experiments.record.journal import Header, Writer
from experiments.record.service import figures
from experiments.record.store import upload
from experiments.sweeps.report import command as report
from tests.conftest import all_runs, runs_of


def invoke(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> int:
    monkeypatch.setattr(sys, "argv", ["experiments", *args])
    return exits.invoke(app.hydra_main)


def journals(root: Path) -> list[Path]:
    return journal.find([root / "outputs"])


def test_an_offline_run_touches_no_store_and_sync_uploads_it_whole(
    monkeypatch, capfd, workdir, new_store_uri
) -> None:
    store_uri = new_store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    assert invoke(monkeypatch, ["tracking.offline=true", "task.steps=30"]) == 0
    out = capfd.readouterr().out
    assert "recorded offline in " in out and "python -m experiments.sync " in out
    assert not (workdir / "mlflow.db").exists()  # nothing was contacted
    (path,) = journals(workdir)
    assert journal.read_header(path).tracking_uri == store_uri  # where sync will send it

    assert sync.main([]) == 0  # default: outputs/
    out = capfd.readouterr().out
    assert "uploaded: outputs/runs/" in out and "1 journal: 1 uploaded" in out
    client = MlflowClient(store_uri)
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "minimize tracking.offline=true task.steps=30"
    assert run.data.params["task.steps"] == "30" and run.data.tags["task"] == "minimize"
    assert run.data.tags["journal.id"] == journal.read_header(path).journal_id
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == 31
    # code.diff too where the checkout the tests run from has changes not committed
    assert {a.path for a in client.list_artifacts(run.info.run_id)} - {"code.diff"} == {
        "config.yaml",
        "overrides.yaml",
        "environment.json",
        "function.png",
        "loss.png",
    }

    assert sync.main([str(workdir / "outputs")]) == 0
    assert "1 journal: 1 already synced" in capfd.readouterr().out
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == 31
    assert len(all_runs(client)) == 1


def test_an_offline_sweep_is_uploaded_parent_first(
    monkeypatch, capfd, workdir, new_store_uri
) -> None:
    store_uri = new_store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    assert invoke(monkeypatch, ["-m", "tracking.offline=true", "task.steps=3,4,5"]) == 0
    assert "3 jobs: 3 finished" in capfd.readouterr().out
    assert not (workdir / "mlflow.db").exists()
    assert sync.main([]) == 0
    assert "4 journals: 4 uploaded" in capfd.readouterr().out
    runs = runs_of(MlflowClient(store_uri), "minimize")
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "true"]
    jobs = [run for run in runs if run is not parent]
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs"] == "3 jobs: 3 finished"
    assert sorted(run.data.params["task.steps"] for run in jobs) == ["3", "4", "5"]
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    assert {run.info.status for run in jobs} == {"FINISHED"}


def test_offline_and_skip_existing_exclude_each_other(monkeypatch, capfd, workdir) -> None:
    assert invoke(monkeypatch, ["tracking.offline=true", "skip_existing=true"]) == 1
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: skip_existing=true") and "tracking.offline=true" in err


def offline_journal(directory: Path, uri: str, points: int = 10) -> Path:
    directory.mkdir(parents=True)
    path = directory / journal.NAME
    writer = Writer(path, Header(tracking_uri=uri, experiment="kept", run_name="kept run"))
    for step in range(points):
        writer.append({"type": "metrics", "step": step, "values": {"loss": float(step)}})
    writer.append({"type": "end", "status": "FINISHED", "error": None})
    writer.close()
    return path


def test_a_journal_cut_short_is_uploaded_up_to_the_cut_with_a_warning(
    capfd, caplog, workdir, store_uri
) -> None:
    path = offline_journal(workdir / "outputs" / "a", store_uri, points=10)
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:-1]) + '{"type":"metrics","step":10,"val')  # the end cut off
    assert sync.main([str(path)]) == 0
    out, err = capfd.readouterr()
    # on stderr, or in pytest's own log capture when this test runs first in its process
    assert "cut short" in err + caplog.text
    assert "closed as lost" in out  # no end line: its process never closed it
    client = MlflowClient(store_uri)
    (run,) = runs_of(client, "kept")
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 10
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("lost: process")


def test_dry_run_changes_nothing(capfd, workdir, store_uri) -> None:
    path = offline_journal(workdir / "outputs" / "a", store_uri)
    assert sync.main(["--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "would be uploaded: " in out and "a run named 'kept run'" in out
    assert not marks.state_path(path).exists()
    assert all_runs(MlflowClient(store_uri)) == []


def test_a_journal_still_being_written_is_left_alone(capfd, workdir, store_uri) -> None:
    directory = workdir / "outputs" / "live"
    directory.mkdir(parents=True)
    writer = Writer(directory / journal.NAME, Header(store_uri, "kept", "live run"))
    try:
        assert sync.main([]) == 0
        assert "still running: " in capfd.readouterr().out
    finally:
        writer.close()
    assert all_runs(MlflowClient(store_uri)) == []


def missing(root: Path) -> Path:
    return root / "missing"


def empty(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def not_a_journal(root: Path) -> Path:
    (root / "journal.jsonl").write_text("hello\n")
    return root / "journal.jsonl"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (missing, r"missing: no such file or directory"),
        (empty, r"empty: no run journal found"),
        (not_a_journal, r"journal\.jsonl: not a journal"),
    ],
)
def test_bad_paths_are_one_line_each_and_exit_1(capfd, workdir, make, match) -> None:
    target = make(workdir)
    assert sync.main([str(target)]) == 1
    lines = [line for line in capfd.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(match, lines[0]), lines[0]


def test_an_unreachable_store_is_one_line_and_nothing_is_marked_uploaded(capfd, workdir) -> None:
    path = offline_journal(workdir / "outputs" / "a", "http://127.0.0.1:9")
    assert sync.main(["--timeout-s", "2"]) == 1
    err = [line for line in capfd.readouterr().err.splitlines() if line]
    assert len(err) == 1 and "cannot reach the MLflow server" in err[0], err
    assert not marks.state_path(path).exists()


def test_tracking_uri_sends_journals_to_another_store(capfd, workdir, tmp_path) -> None:
    path = offline_journal(workdir / "outputs" / "a", "http://127.0.0.1:9")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert sync.main(["--tracking-uri", other]) == 0
    (run,) = runs_of(MlflowClient(other), "kept")
    assert run.info.status == "FINISHED"
    assert json.loads(marks.state_path(path).read_text())["tracking_uri"] == other


def figure_journal(directory: Path, uri: str) -> tuple[Path, bytes]:
    """A journal whose figure its run sent to a recording process, not drawn yet; and the
    figure as it was sent (pickled)."""
    import pickle

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from experiments.record.recorder import JournalRecorder

    directory.mkdir(parents=True)
    path = directory / journal.NAME
    writer = Writer(path, Header(tracking_uri=uri, experiment="drawn", run_name="drawn run"))
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    sent = []
    JournalRecorder(writer, directory, send_figure=lambda f, p: sent.append(f) or True).log_figure(
        figure, "loss.png"
    )
    writer.append({"type": "end", "status": "FINISHED", "error": None})
    writer.close()
    return path, pickle.dumps(sent[0])


def crafted_journal(directory: Path, uri: str, marker: Path) -> Path:
    """A dead job's journal in a shared directory, its figure a pickle that would create
    ``marker`` when read: code, not data."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    directory.mkdir(parents=True)
    path = directory / journal.NAME
    writer = Writer(path, Header(tracking_uri=uri, experiment="crafted", run_name="crafted"))
    # Where the run's files are, as a live run tags it: a reader that looked there for its
    # figures would find the pickle.
    writer.append({"type": "tags", "tags": {"output_dir": str(directory)}})
    (directory / ".loss.png.pickle").write_bytes(pickle.dumps(Payload()))
    writer.append({"type": "artifact", "file": "loss.png", "dir": None, "figure": True})
    writer.append(
        {"type": "artifact", "file": "loss.png", "dir": None, "figure": ".loss.png.pickle"}
    )
    writer.close()  # no end line: its process is gone
    return path


def test_the_live_uploader_waits_for_a_figure_sent_to_its_process(workdir, store_uri, client):
    # The upload may reach the figure's line before the recording process has drawn it:
    # it waits for the picture (until the run has ended), then uploads it, not missed.
    path, pickled = figure_journal(workdir / "run", store_uri)
    uploader = upload.Uploader(client, path, marks.State.load(path, store_uri), figures=True)
    uploader.ensure_run()
    assert uploader.pump()
    assert client.list_artifacts(uploader.run_id) == [] and uploader.waiting
    figures.draw(workdir / "run" / "loss.png", pickled)  # the recording process draws it
    uploader.pump()
    assert [a.path for a in client.list_artifacts(uploader.run_id)] == ["loss.png"]
    assert uploader.counts.skipped == [] and not uploader.waiting


def test_a_crafted_journal_is_adopted_synced_and_reported_without_running_its_pickle(
    capsys, workdir, store_uri, client
) -> None:
    from experiments import record

    marker = workdir / "the-pickle-ran"
    adopted = crafted_journal(workdir / "sweep" / "0", store_uri, marker)
    store = record.Store(uri=store_uri, source="tracking.uri")
    settings = record.Settings()
    assert record.adopt(adopted, store, "FAILED", "lost: test", settings) is not None
    synced = crafted_journal(workdir / "sweep" / "1", store_uri, marker)
    assert sync.main([str(synced.parent), "--tracking-uri", store_uri]) in (0, 1)
    assert not marker.exists()
    assert len(runs_of(client, "crafted")) == 2  # recorded, closed, no picture
    out = workdir / "report"  # python -m experiments.report, as sync.main above
    args = ["--experiment", "crafted", "--tracking-uri", store_uri, "--out", str(out)]
    assert report.main(args) == 0
    assert "Experiment 'crafted': 2 runs: 2 failed" in capsys.readouterr().out
    assert (out / "table.txt").is_file()
    assert not marker.exists()


def test_sync_never_unpickles_a_figure(caplog, workdir, store_uri, client) -> None:
    path, _ = figure_journal(workdir / "run", store_uri)
    assert sync.main([str(path.parent), "--tracking-uri", store_uri]) == 0
    assert "loss.png is missing; not uploaded" in caplog.text
    assert not (workdir / "run" / "loss.png").exists()
    (run,) = runs_of(client, "drawn")
    assert run.info.status == "FINISHED" and client.list_artifacts(run.info.run_id) == []


class ClosedAsLostAtTheEnd(MlflowClient):
    """A real client on a real store where, the moment its run ends, another client closes
    that run as lost: a look for lost runs that found it RUNNING just before (the window a
    sync running beside another one left open)."""

    closed = 0

    def set_terminated(self, run_id, status=None, end_time=None):
        super().set_terminated(run_id, status=status, end_time=end_time)
        if not self.closed:
            self.closed += 1
            other = MlflowClient(self.tracking_uri)
            other.set_tag(run_id, "error", "lost: process 7 on node-1 is gone (last seen ...)")
            other.set_terminated(run_id, "FAILED")


def test_an_upload_keeps_its_journals_end_when_another_process_closes_the_run_as_lost(
    caplog, workdir, store_uri
) -> None:
    path = offline_journal(workdir / "outputs" / "a", store_uri)
    client = ClosedAsLostAtTheEnd(store_uri)
    uploader = upload.deliver(client, path, store_uri)
    run = MlflowClient(store_uri).get_run(uploader.run_id)
    assert run.info.status == "FINISHED"  # as its journal says
    assert "error" not in run.data.tags
    assert f"run {uploader.run_id} was closed as FAILED" in caplog.text
    # While it sent, the run said which process uploads its journal.
    assert run.data.tags["upload.pid"] == str(os.getpid())
    assert run.data.tags["upload.host"] == liveness.host()


def test_a_run_is_created_with_its_uploader_named(workdir, store_uri, client) -> None:
    # Created by a sync, a run kept offline is RUNNING until its end is uploaded: from its
    # first moment it names the process uploading it, so that no look for lost runs (its
    # own process long gone) closes it meanwhile.
    path = offline_journal(workdir / "outputs" / "a", store_uri)
    uploader = upload.Uploader(client, path, marks.State.load(path, store_uri))
    run = client.get_run(uploader.ensure_run())
    assert run.info.status == "RUNNING"
    assert run.data.tags["upload.pid"] == str(os.getpid())
    assert liveness.close_lost_runs(client, [run.info.experiment_id], lost_after_s=0) == []
