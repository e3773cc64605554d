"""The command line as users type it: bad input gives one line and a non-zero exit.

In-process invocations (fast) cover every bad input; subprocess tests run the README's
command lines exactly, from a directory outside the checkout.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from experiments.command import app, exits
from tests.conftest import all_runs, run_cli, runs_of


def invoke(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> int:
    monkeypatch.setattr(sys, "argv", ["experiments", *args])
    return exits.invoke(app.hydra_main)


def error_lines(stderr: str) -> list[str]:
    # MLflow announces the creation of a new store on stderr; that is not our error.
    return [line for line in stderr.splitlines() if line and "mlflow.store.db.utils" not in line]


BAD_INPUTS = [
    (["task=nope"], r"task=nope: no such task; the tasks found: derivative, .*matmul, minimize"),
    (["optim=nope"], r"Could not find 'optim/nope'; available options in 'optim': .*sgd"),
    (["optim.lr=abc"], r"optim\.lr=abc.*could not be converted to Float"),
    (["optim.lrr=0.1"], r"optim\.lrr.*Key 'lrr' not in"),
    (["optim.lr=-0.5"], r"optim\.lr must be a positive number, got -0\.5"),
    (["task.steps=0"], r"task\.steps must be a positive integer, got 0"),
    (["device=tpu"], r"device must be one of auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    (['task.expr="3*x +"'], r"task\.expr does not parse"),
    (['task.expr="x + z"'], r"task\.init has no value for z"),
    (['task.expr="foo(x)"'], r"task\.expr: unknown function 'foo'"),
    (['task.expr="x.__class__"'], r"task\.expr: attribute access is not allowed"),
    (["task.expr=\"__import__('os')\""], r"task\.expr: unknown function '__import__'"),
    (['task.expr="(lambda: 1)()"'], r"task\.expr: .*lambda"),
    (['task.expr="x[0]"'], r"task\.expr: .*subscript"),
    (["task.expr=\"'abc'\""], r"task\.expr: .*string"),
    (['task.expr="9**9**9**9"'], r"task\.expr: .*exponent"),
    (["task.expr=sin(x)"], r"Error parsing override .*need quoting"),
    (["optim._target_=torch.optim.Adamax"], r"optim\.momentum is not an argument of"),
    (["optim._target_=os.system"], r"optim\._target_=os\.system is not a torch\.optim"),
]


@pytest.mark.parametrize(("args", "match"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_1_with_no_run(
    monkeypatch, capfd, store_uri, client, args, match
) -> None:
    status = invoke(monkeypatch, [f"tracking.uri={store_uri}", *args])
    lines = error_lines(capfd.readouterr().err)
    assert status == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert re.search(match, lines[0]), lines[0]
    assert all_runs(client) == []  # refused before any run started


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["tracking.uri=foo://bar"], r"^error: tracking\.uri=foo://bar: unknown scheme 'foo'"),
        (
            ["tracking.uri=foo://user:secret@bar"],
            r"^error: tracking\.uri=foo://user@bar: unknown scheme",  # no password shown
        ),
        (
            ["hydra.run.dir=/proc/x"],
            r"^error: hydra\.run\.dir=/proc/x: cannot create the output directory /proc/x: ",
        ),
        (
            ["-m", "hydra.sweep.dir=/proc/x", "task.steps=1,2"],
            r"^error: hydra\.sweep\.dir=/proc/x: cannot create the output directory /proc/x",
        ),
    ],
    ids=["unknown-scheme", "unknown-scheme-with-password", "run-dir", "sweep-dir"],
)
def test_a_bad_store_or_output_directory_is_one_line_naming_the_setting(
    monkeypatch, capfd, recwarn, workdir, args, match
) -> None:
    status = invoke(monkeypatch, args)
    assert [str(w.message) for w in recwarn if "Callback" in str(w.message)] == []
    lines = error_lines(capfd.readouterr().err)
    assert status == 1
    assert len(lines) == 1, lines
    assert re.search(match, lines[0]), lines[0]
    assert not (workdir / "mlflow.db").exists()  # nothing was recorded anywhere


def test_scrub_removes_passwords_from_every_url_in_a_text() -> None:
    from experiments.record.uris import redact, scrub

    text = (
        "tracking.uri=http://ann:s3cret@host:5000 and tracking.uri=http\\://ann\\:s3cret@host"
        " postgresql+psycopg2://bob:pw@db/mlflow mail me at ann@example.org http://ann@host"
    )
    assert scrub(text) == (
        "tracking.uri=http://ann@host:5000 and tracking.uri=http\\://ann@host"
        " postgresql+psycopg2://bob@db/mlflow mail me at ann@example.org http://ann@host"
    )
    assert redact("http://ann:s3cret@host:5000/x") == "http://ann@host:5000/x"


RUNTIME_FAILURES = [
    (["optim.lr=50", "task.steps=200"], r"diverged: loss=inf"),
    (['task.expr="log(x)"', "task.init.x=-1"], r"diverged: loss=nan"),
]
if not torch.cuda.is_available():
    RUNTIME_FAILURES.append((["device=cuda"], r"device=cuda is not available: .* available: cpu"))


@pytest.mark.parametrize(("args", "match"), RUNTIME_FAILURES)
def test_runtime_failure_is_one_line_and_the_run_is_failed(
    monkeypatch, capfd, store_uri, client, args, match
) -> None:
    status = invoke(monkeypatch, [f"tracking.uri={store_uri}", *args])
    lines = [line for line in error_lines(capfd.readouterr().err) if line.startswith("error")]
    assert status == 1
    assert len(lines) == 1 and re.search(match, lines[0]), lines
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] in lines[0]


def test_unreachable_server_fails_fast(monkeypatch, capfd, workdir) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    status = invoke(monkeypatch, [f"tracking.uri=http://127.0.0.1:{port}", "tracking.timeout_s=2"])
    elapsed = time.monotonic() - started
    lines = error_lines(capfd.readouterr().err)
    assert status == 1
    assert lines == [
        f"error: tracking.uri=http://127.0.0.1:{port}: cannot reach the MLflow "
        "server ([Errno 111] Connection refused)"
    ]
    assert elapsed < 10


def test_full_error_shows_the_traceback(monkeypatch, workdir) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="task.steps"):
        invoke(monkeypatch, ["task.steps=0"])


@pytest.mark.slow
def test_readme_command_uses_the_default_store_in_the_working_directory(workdir) -> None:
    result = run_cli(["task=minimize", "optim.lr=0.1"], cwd=workdir)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FINISHED"
    assert f"{run.data.metrics['var/x']:.4f}" == "-1.0000"
    assert run.info.run_name == "minimize optim.lr=0.1"
    assert list((workdir / "outputs" / "runs").glob("*/*/.hydra/config.yaml"))


@pytest.mark.usefixtures("store_uri")  # an empty store here: its making is not the point
@pytest.mark.slow
def test_sweep_runs_every_job_and_exits_non_zero_when_one_fails(workdir) -> None:
    result = run_cli(["-m", "optim=sgd,adam", "optim.lr=0.1,50", "task.steps=200"], cwd=workdir)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged" in errors[0]
    assert "4 jobs: 3 finished, 1 failed" in result.stdout  # the summary table
    assert "Traceback" not in result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = runs_of(client, "minimize")
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "true"]
    assert parent.info.status == "FAILED"
    jobs = [run for run in runs if run is not parent]
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    statuses = sorted(
        (run.data.params["optim._target_"], run.data.params["optim.lr"], run.info.status)
        for run in jobs
    )
    assert statuses == [
        ("torch.optim.Adam", "0.1", "FINISHED"),
        ("torch.optim.Adam", "50.0", "FINISHED"),
        ("torch.optim.SGD", "0.1", "FINISHED"),
        ("torch.optim.SGD", "50.0", "FAILED"),
    ]
    assert len(list((workdir / "outputs" / "multirun").glob("*/*/*/.hydra"))) == 4
    # The parent keeps the table it printed.
    summary = client.download_artifacts(parent.info.run_id, "summary.txt", str(workdir))
    assert "4 jobs: 3 finished, 1 failed" in Path(summary).read_text()


@pytest.mark.slow
def test_help_lists_groups_and_the_console_script_prints_the_config(workdir) -> None:
    help_text = run_cli(["--help"], cwd=workdir)
    assert help_text.returncode == 0
    assert "optim: adagrad, adam, adamw, lbfgs, rmsprop, sgd" in help_text.stdout
    assert "task: " in help_text.stdout and "minimize" in help_text.stdout
    assert "_schema" not in help_text.stdout
    # The console script pip installed next to this Python is the same program.
    script = Path(sys.executable).with_name("experiments")
    shown = subprocess.run(
        [str(script), "--cfg", "job", "optim=adam", "optim.lr=0.3"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    assert "_target_: torch.optim.Adam" in shown.stdout and "lr: 0.3" in shown.stdout
    assert not (workdir / "mlflow.db").exists()  # printing the config runs nothing


@pytest.mark.usefixtures("store_uri")  # an empty store here: its making is not the point
@pytest.mark.slow
def test_two_sweeps_in_the_same_second_do_not_share_a_directory(workdir) -> None:
    # The shipped sweep directory with its time of day fixed: two sweeps started at once
    # are then certain to fall in the same second, and only the uid can keep them apart.
    shipped = yaml.safe_load((Path(app.__file__).parents[1] / "conf" / "config.yaml").read_text())
    pattern = shipped["hydra"]["sweep"]["dir"]
    assert "${now:%H-%M-%S}" in pattern and "${uid:}" in pattern
    same_second = pattern.replace("${now:%H-%M-%S}", "12-00-00")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = [sys.executable, "-m", "experiments", "-m", "task.steps=2,3"]
    args.append(f"hydra.sweep.dir={same_second}")
    procs = [
        subprocess.Popen(
            args, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    sweeps = list((workdir / "outputs" / "multirun").glob("*/12-00-00-*"))
    assert len(sweeps) == 2
    assert sorted(len(list(s.glob("*/.hydra"))) for s in sweeps) == [2, 2]
