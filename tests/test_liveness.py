"""Lost runs: telling a dead process from a live one, and closing the runs it left RUNNING."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from experiments import runner
from experiments.record import liveness
from tests.conftest import compose_config, runs_of


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_process_a_gone_one_a_zombie_and_a_reused_pid() -> None:
    me = os.getpid()
    assert liveness.process_alive(me, liveness.process_started(me))
    assert not liveness.process_alive(dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # it has ended; until it is waited for, it is a zombie
    try:
        assert not liveness.process_alive(zombie.pid)
    finally:
        zombie.wait()
    if liveness.process_started(me) is not None:  # Linux: a pid now used by another process
        assert not liveness.process_alive(me, liveness.process_started(me) - 100)


def tags(
    pid: int, heartbeat_age_s: float, host: str | None = None, place: str | None = "here"
) -> dict[str, str]:
    """A run's liveness tags; ``place="here"``: this host's boot and pid namespace."""
    now = int(time.time() * 1000)
    found = {
        "host": host or liveness.host(),
        "pid": str(pid),
        "heartbeat": liveness.heartbeat(now - int(heartbeat_age_s * 1000)),
        "output_dir": "/data/runs/7",
    }
    if place is not None:
        found["host.id"] = liveness.place() if place == "here" else place
    return found


@pytest.mark.parametrize(
    ("run_tags", "lost"),
    [
        (lambda: tags(os.getpid(), 3600), None),  # this host, alive: however old the beat
        (lambda: tags(dead_pid(), 1), "lost: process .* on .* is gone"),
        (lambda: tags(1234, 60, host="node-7"), None),  # another host, beating recently
        (lambda: tags(1234, 600, host="node-7"), "lost: no heartbeat from process 1234 on node-7"),
        (lambda: {"host": "node-7", "pid": "1"}, None),  # not a run of this package
        # Another container with the same host name (its own pid namespace): a pid there
        # means nothing here, only its heartbeat does.
        (lambda: tags(dead_pid(), 60, place="0b5e-other/4026532999"), None),
        (
            lambda: tags(dead_pid(), 600, place="0b5e-other/4026532999"),
            "lost: no heartbeat from process",
        ),
        # Recorded without a place (an earlier version): unsure, so its heartbeat decides.
        (lambda: tags(dead_pid(), 60, place=None), None),
    ],
)
def test_which_running_runs_are_lost(run_tags, lost) -> None:
    found = liveness.lost_reason(run_tags(), int(time.time() * 1000), lost_after_s=300)
    if lost is None:
        assert found is None
    else:
        reason, last_seen = found
        assert __import__("re").match(lost, reason), reason
        assert "last seen" in reason and "python -m experiments.sync /data/runs/7" in reason
        assert last_seen <= time.time() * 1000


def uploaded_by(pid: int, beat_age_s: float, place: str | None = "here") -> dict[str, str]:
    """The ``upload.*`` tags of a process uploading a run's journal."""
    found = {
        f"{liveness.UPLOAD_PREFIX}{key}": value
        for key, value in tags(pid, beat_age_s, place=place).items()
        if key != "output_dir"
    }
    return found


@pytest.mark.parametrize(
    ("uploader", "lost"),
    [
        # Its own process is gone, but another (this one) is uploading its journal now.
        (lambda: uploaded_by(os.getpid(), 3600), False),
        (lambda: uploaded_by(dead_pid(), 1), True),  # its uploader is gone too
        # An uploader on another host: by its own heartbeat.
        (lambda: uploaded_by(1234, 60, place="0b5e-other/4026532999"), False),
        (lambda: uploaded_by(1234, 600, place="0b5e-other/4026532999"), True),
    ],
)
def test_a_run_whose_journal_is_being_uploaded_is_not_lost(uploader, lost) -> None:
    run_tags = {**tags(dead_pid(), 600), **uploader()}
    found = liveness.lost_reason(run_tags, int(time.time() * 1000), lost_after_s=300)
    assert (found is not None) == lost
    if lost:  # the reason is the run's own process's, not its uploader's
        assert found[0].startswith(f"lost: process {run_tags['pid']} on ")


def test_the_uploaders_tags_name_this_process() -> None:
    found = liveness.uploader_tags()
    assert found["upload.pid"] == str(os.getpid())
    assert found["upload.host"] == liveness.host()
    assert found["upload.host.id"] == liveness.place()
    assert liveness.parse_heartbeat(found["upload.heartbeat"]) >= time.time() * 1000 - 2000


class EndsRunsOnceFound(MlflowClient):
    """A real client on a real store whose every query for RUNNING runs is followed, at
    once, by each of those runs ending FINISHED in another client: the moment between a
    look for lost runs and its closing them, where the run's own uploader ends it."""

    def search_runs(self, *args, **kwargs):
        found = super().search_runs(*args, **kwargs)
        other = MlflowClient(self.tracking_uri)
        for run in found:
            other.set_terminated(run.info.run_id, "FINISHED")
        return found


def test_a_run_ended_between_the_look_for_lost_runs_and_its_closing_is_left(store_uri) -> None:
    client = EndsRunsOnceFound(store_uri)
    experiment = client.create_experiment("lost")
    run = client.create_run(experiment, tags=tags(dead_pid(), 5), run_name="done")
    assert liveness.close_lost_runs(client, [experiment], lost_after_s=300) == []
    done = MlflowClient(store_uri).get_run(run.info.run_id)
    assert done.info.status == "FINISHED"
    assert "error" not in done.data.tags


def test_lost_runs_are_closed_failed_and_the_others_left_alone(store_uri) -> None:
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("lost")
    gone = tags(dead_pid(), 5)
    created = {
        "gone": client.create_run(experiment, tags=gone, run_name="gone"),
        "silent": client.create_run(experiment, tags=tags(99, 900, "node-7"), run_name="silent"),
        "beating": client.create_run(experiment, tags=tags(99, 5, "node-7"), run_name="beating"),
        "foreign": client.create_run(experiment, run_name="foreign"),
    }
    closed = liveness.close_lost_runs(client, [experiment], lost_after_s=300)
    assert sorted(run.name for run in closed) == ["gone", "silent"]
    runs = {run.info.run_name: run for run in runs_of(client, "lost")}
    assert runs["gone"].info.status == "FAILED"
    assert runs["gone"].data.tags["error"].startswith("lost: process")
    assert runs["gone"].info.end_time == liveness.parse_heartbeat(gone["heartbeat"])
    assert runs["silent"].info.status == "FAILED"
    assert runs["beating"].info.status == "RUNNING"
    assert runs["foreign"].info.status == "RUNNING"
    assert len(created) == 4


def test_every_run_start_closes_the_lost_runs_of_its_experiment(store_uri, tmp_path) -> None:
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("minimize")
    crashed = client.create_run(experiment, tags=tags(dead_pid(), 5), run_name="crashed")
    cfg = compose_config(["task.steps=3", f"tracking.uri={store_uri}"])
    runner.run(cfg, output_dir=tmp_path / "out")
    assert client.get_run(crashed.info.run_id).info.status == "FAILED"


def test_a_sweeps_job_whose_pid_was_reused_is_gone_and_never_signalled(tmp_path) -> None:
    import signal

    from experiments.sweeps.outcomes import Outcome, read_outcomes, started

    # A job's outcome as the job writes it: its pid with its start time.
    (tmp_path / "0").mkdir()
    mine = started(0, ["task.steps=3"], tmp_path / "0")
    (recorded,) = read_outcomes(tmp_path)
    assert (recorded.pid, recorded.pid_started) == (os.getpid(), mine.pid_started)
    assert recorded.place == liveness.place() is not None
    assert mine.pid_started == liveness.process_started(os.getpid())

    other = subprocess.Popen(["sleep", "60"])  # holds the pid now: another process
    try:
        begun = liveness.process_started(other.pid)
        here = {"host": liveness.host(), "place": liveness.place()}
        reused = Outcome(0, [], "RUNNING", pid=other.pid, pid_started=begun - 50, **here)
        assert reused.gone()
        assert reused.signal(signal.SIGTERM) is False
        time.sleep(0.2)
        assert other.poll() is None  # the unrelated process was left alone
        same = Outcome(0, [], "RUNNING", pid=other.pid, pid_started=begun, **here)
        assert not same.gone()
        assert same.signal(signal.SIGTERM) is True
        assert other.wait(timeout=10) == -signal.SIGTERM
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_a_run_closed_as_lost_that_then_finishes_keeps_no_lost_reason(workdir, client) -> None:
    from tests.test_faults import start_cli, wait_for_points

    running = start_cli(["task.steps=12000", "optim.lr=1e-7", "tracking.log_every=100"], workdir)
    try:
        wait_for_points(workdir / "outputs", 20)
        (run,) = runs_of(client, "minimize")
        # Seen from another host, its heartbeat late: closed as lost, as close_lost_runs does.
        client.set_tag(run.info.run_id, "error", f"{liveness.LOST_PREFIX} no heartbeat")
        client.set_terminated(run.info.run_id, "FAILED")
        assert running.wait(timeout=180) == 0
    finally:
        running.kill()
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FINISHED"
    assert "error" not in run.data.tags
