"""Sweeps on a real single-node Slurm cluster: launch, scancel, time limit, requeue.

The cluster is ``tests/slurm/cluster.sh``'s (slurmctld, slurmd, slurmdbd with MariaDB for
``sacct``, munge), started by ``.ci/run`` and named by ``EXPERIMENTS_SLURM_DIR``, or started
here for this module when that is unset and the machine can (root, Slurm's packages).
Tests run only against a cluster that script made: its directory holds the ``owner`` file
naming the cluster, and ``scontrol`` must report that name. With ``CI=true`` a missing
cluster fails the tests instead of skipping them.

Every sweep runs as the README shows it (``python -m experiments -m experiment=slurm ...``)
in a directory of its own, and the results are read back with a plain ``MlflowClient``. The
sweeps start together when the module starts, so the minute a time limit takes is spent
once, alongside the others.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import optuna
import pytest
from mlflow import MlflowClient

from tests.conftest import runs_of

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPT = Path(__file__).parent / "slurm" / "cluster.sh"
DIR_VARIABLE = "EXPERIMENTS_SLURM_DIR"
PACKAGES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")
PARENT_TAG = "mlflow.parentRunId"
LONG = ["task.steps=5000000", "optim.lr=1e-7", "tracking.log_every=100"]
# A 2-minute limit: Slurm sends submitit's SIGUSR2 signal_delay_s before it, give or take
# its 30-second checks (it sends once now + delay + 30 s passes the limit): 30 to 60 s into
# the job, after its start-up. A longer delay would send it at once, before the job's
# Python has a handler for it, and the job would die of it.
TIME_LIMIT = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60"]
SWEEP_TIMEOUT_S = 400  # the requeue sweep: two attempts of up to a minute each, and a wait
# A job Slurm holds PENDING (reason BeginTime) for an hour, and a launcher that waits 3 s.
HELD = ["+hydra.launcher.additional_parameters.begin=now+1hour", "hydra.launcher.max_wait_min=0.05"]


def missing() -> Optional[str]:
    """Why this machine cannot start a cluster of its own (None when it can)."""
    absent = [name for name in PACKAGES if shutil.which(name) is None]
    if absent:
        return (
            f"{', '.join(absent)} not installed (Debian: apt-get install --no-install-recommends "
            "slurmctld slurmd slurm-client slurmdbd munge mariadb-server)"
        )
    if os.geteuid() != 0:
        return f"starting a Slurm cluster needs root; or start one and set {DIR_VARIABLE}"
    return None


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the Slurm tests must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the Slurm tests must run in CI: {reason}")
    pytest.skip(reason)


class Cluster:
    """A cluster that ``tests/slurm/cluster.sh`` started, checked to be that one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        owner = directory / "owner"
        if not owner.is_file():
            pytest.fail(f"{directory} holds no cluster of tests/slurm/cluster.sh (no owner file)")
        fields = dict(line.split("=", 1) for line in owner.read_text().split())
        self.name, self.partition = fields["cluster"], fields["partition"]
        self.env = {"SLURM_CONF": str(directory / "slurm.conf")}
        shown = self.run("scontrol", "show", "config").stdout
        if f"ClusterName             = {self.name}\n" not in shown:
            pytest.fail(f"the cluster at {directory} does not answer as {self.name}")

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, env={**os.environ, **self.env}, capture_output=True, text=True, check=True
        )


@pytest.fixture(scope="module")
def cluster():
    """The tests' own cluster: the one ``.ci/run`` started, or one started for this module."""
    given = os.environ.get(DIR_VARIABLE)
    if given:
        yield Cluster(Path(given))
        return
    reason = missing()
    if reason is not None:
        unavailable(reason)
    directory = Path(tempfile.mkdtemp(prefix="experiments-slurm-"))
    started = subprocess.run(["bash", str(SCRIPT), "start", str(directory)], capture_output=True)
    if started.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], capture_output=True)
        pytest.fail(f"could not start a Slurm cluster: {started.stderr.decode()[-2000:]}")
    try:
        yield Cluster(directory)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], capture_output=True)


class Sweep:
    """``python -m experiments -m experiment=slurm ...`` running in a directory of its own."""

    def __init__(
        self,
        cluster: Cluster,
        directory: Path,
        args: list[str],
        store: Optional[str] = None,
        path: Optional[Path] = None,
    ) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.store = store or f"sqlite:///{directory / 'mlflow.db'}"
        self.client = MlflowClient(self.store)
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        # The jobs inherit it (sbatch passes the environment on), as a user's would.
        env.update(cluster.env, MLFLOW_TRACKING_URI=self.store)
        if path is not None:  # programs found there first
            env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
        command = ["-m", "experiment=slurm"]
        command += [] if any(arg.startswith("device=") for arg in args) else ["device=cpu"]
        command += [f"hydra.launcher.partition={cluster.partition}"]
        command += ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", *args]
        with open(directory / "out", "w") as out, open(directory / "err", "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "experiments", *command],
                cwd=directory,
                env=env,
                stdout=out,
                stderr=err,
            )

    def wait(self, timeout: float = SWEEP_TIMEOUT_S) -> tuple[int, str, str]:
        """The exit status, standard output and standard error, once the sweep ended."""
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(
                f"the sweep in {self.directory} did not end: {self.logs()}"
            ) from None
        return status, (self.directory / "out").read_text(), (self.directory / "err").read_text()

    def split(self) -> tuple:
        """The sweep's parent run and its jobs' runs, oldest first."""
        runs = runs_of(self.client, "minimize")
        parents = [run for run in runs if run.data.tags.get("sweep") == "true"]
        assert len(parents) == 1, [run.info.run_name for run in runs]
        return parents[0], [run for run in runs if run.data.tags.get("sweep") != "true"]

    def job_dirs(self, pattern: str = "[0-9]*") -> list[Path]:
        """The jobs' submitit folders (one per Slurm job: ``<job id>_<index>``)."""
        return sorted(self.directory.glob(f"outputs/multirun/*/*/.submitit/{pattern}"))

    def logs(self) -> str:
        """The jobs' own logs, the ends of them, for a failure's message."""
        found = sorted(self.directory.glob("outputs/multirun/*/*/.submitit/*/*_log.*"))
        return "\n".join(f"{path.name}: {path.read_text()[-1500:]}" for path in found)


@pytest.fixture(scope="module")
def sweeps(cluster, tmp_path_factory):
    """Every sweep of this module, started at once (they run side by side on the cluster)."""
    root = tmp_path_factory.mktemp("slurm")
    started = {
        "several": Sweep(cluster, root / "several", ["task.steps=5,6"]),
        "cancel": Sweep(cluster, root / "cancel", ["task.steps=5000000,30", *LONG[1:]]),
        "no_accounting": Sweep(
            cluster,
            root / "no_accounting",
            ["task.steps=5000002,31", *LONG[1:]],
            path=no_accounting(root / "bin"),
        ),
        "devices": Sweep(cluster, root / "devices", ["device=cpu,cuda", "task.steps=5"]),
        "requeue": Sweep(
            cluster,
            root / "requeue",
            [*LONG, *TIME_LIMIT, "hydra.launcher.max_num_timeout=1", "task.steps=5000001"],
        ),
        "search": Sweep(  # two batches: two trials side by side, then the third
            cluster,
            root / "search",
            ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2"]
            + ["optim.lr=interval(0.01,0.1)", "task.steps=5"],
        ),
    }
    # Two search commands on one study, each a Slurm job of its own (basic launcher inside).
    started_searches = [submit_search(cluster, root / "shared_search") for _ in range(2)]
    yield {**started, "shared_search": started_searches}
    for sweep in started.values():
        if sweep.process.poll() is None:
            sweep.process.kill()
    subprocess.run(["scancel", *started_searches], env={**os.environ, **cluster.env})


SHARED_SEARCH = ["experiment=lr_search", "task.steps=10", "hydra.sweeper.n_trials=6"]


def submit_search(cluster: Cluster, directory: Path) -> str:
    """``sbatch`` a search on the study ``shared`` in ``directory``'s journal file; its job id.

    The search's runs (its parent and its trials) are tagged with the Slurm job running it.
    """
    directory.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "experiments",
        "-m",
        *SHARED_SEARCH,
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.storage=journal:{directory / 'study.journal'}",
        f"tracking.uri=sqlite:///{directory / 'mlflow.db'}",
        "device=cpu",
        "++tracking.tags.slurm_job=$SLURM_JOB_ID",
    ]
    submitted = cluster.run(
        "sbatch",
        "--parsable",
        f"--partition={cluster.partition}",
        "--cpus-per-task=1",
        "--mem=1G",
        f"--chdir={directory}",
        "--output=%j.out",
        "--wrap",
        " ".join(command),
    )
    return submitted.stdout.strip().split(";")[0]


def test_a_sweep_runs_every_job_as_a_finished_child_and_never_twice(cluster, sweeps) -> None:
    sweep = sweeps["several"]
    status, out, err = sweep.wait()
    assert status == 0, err + sweep.logs()
    assert "Sweep 'sweep slurm': 2 jobs: 2 finished" in out
    # A SQLite store for jobs on a cluster's nodes: said once, with what to use instead.
    warned = [line for line in (out + err).splitlines() if "is a SQLite file" in line]
    assert len(warned) == 1, out + err
    assert "use a tracking server" in warned[0] and "tracking.offline=true" in warned[0]
    parent, jobs = sweep.split()
    assert parent.info.status == "FINISHED"
    assert sorted(run.data.params["task.steps"] for run in jobs) == ["5", "6"]
    assert {run.data.tags[PARENT_TAG] for run in jobs} == {parent.info.run_id}
    assert {run.info.status for run in jobs} == {"FINISHED"}
    # device=cpu asked Slurm for no GPU, without the user saying so.
    (script,) = sweep.directory.glob("outputs/multirun/*/*/.submitit/*/*_submission.sh")
    assert "--gpus-per-node" not in script.read_text()
    assert "#SBATCH --cpus-per-task=1" in script.read_text()
    # Run again with skip_existing=true: every job is found FINISHED in the launching
    # process, and none is queued or runs twice.
    again = Sweep(
        cluster, sweep.directory / "again", ["task.steps=5,6", "skip_existing=true"], sweep.store
    )
    status, out, err = again.wait()
    assert status == 0, err + again.logs()
    assert "2 jobs: 2 skipped" in out
    assert again.job_dirs() == [], "a finished job was submitted to Slurm"
    for index, run in enumerate(sorted(jobs, key=lambda run: run.data.params["task.steps"])):
        line = f"job {index} skipped: this config already FINISHED as run {run.info.run_id}"
        assert line in out + err, out + err
    jobs = [run for run in runs_of(sweep.client, "minimize") if "sweep" not in run.data.tags]
    assert len(jobs) == 2


def wait_for_job(sweep: Sweep, index: int, timeout: float = 180) -> str:
    """The Slurm id of job ``index`` once its run is recording points."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        journals = list(sweep.directory.glob(f"outputs/multirun/*/*/{index}/journal.jsonl"))
        folders = sweep.job_dirs(f"*_{index}")
        if journals and folders and journals[0].stat().st_size > 20_000:
            return folders[0].name
        time.sleep(0.5)
    raise AssertionError(f"job {index} did not start: {sweep.logs()}")


def cancel_job_0(cluster: Cluster, sweep: Sweep) -> tuple[str, str, str]:
    """``scancel`` job 0 once it runs; its Slurm id, and the sweep's output and errors once
    the sweep exited 1 within a minute of it (the launcher's looks at Slurm, and a close)."""
    job_id = wait_for_job(sweep, 0)
    cluster.run("scancel", job_id)
    cancelled = time.monotonic()
    status, out, err = sweep.wait()
    assert time.monotonic() - cancelled < 60
    assert status == 1, err + sweep.logs()
    return job_id, out, err


def test_scancel_ends_the_jobs_run_killed_and_the_sweep_goes_on_to_its_end(cluster, sweeps) -> None:
    sweep = sweeps["cancel"]
    job_id, out, err = cancel_job_0(cluster, sweep)
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(f"error: job 0 (Slurm job {job_id}) ended CANCELLED")
    assert "2 jobs: 1 finished, 1 killed" in out
    parent, jobs = sweep.split()
    statuses = {run.data.params["task.steps"]: run for run in jobs}
    assert statuses["30"].info.status == "FINISHED"
    killed = statuses["5000000"]
    assert killed.info.status == "KILLED", sweep.logs()
    assert killed.data.tags["error"].startswith("terminated by Slurm (SIGTERM")
    assert parent.info.status == "FAILED"  # not left RUNNING
    assert parent.data.tags["error"].startswith(f"job 0 (Slurm job {job_id}) ended CANCELLED")


def no_accounting(directory: Path) -> Path:
    """A directory whose ``sacct`` answers as Slurm's does on a cluster without accounting."""
    directory.mkdir()
    sacct = directory / "sacct"
    sacct.write_text(
        "#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n"
    )
    sacct.chmod(0o755)
    return directory


def test_without_accounting_a_cancelled_job_ends_the_sweep_all_the_same(cluster, sweeps) -> None:
    # sacct fails, as it does where Slurm keeps no accounting; squeue says the job is gone.
    sweep = sweeps["no_accounting"]
    job_id, out, err = cancel_job_0(cluster, sweep)
    assert "sacct does not answer (sacct: error: Slurm accounting storage is disabled)" in out
    assert "Traceback" not in err
    assert "Bypassing sacct error" not in out + err  # submitit's, had it been let ask sacct
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: job 0 (Slurm job {job_id}) ended (no accounting: Slurm cannot say how): "
            "terminated by Slurm (SIGTERM"
        )
    ), err
    assert "2 jobs: 1 finished, 1 killed" in out
    parent, jobs = sweep.split()
    statuses = {run.data.params["task.steps"]: run.info.status for run in jobs}
    assert statuses == {"31": "FINISHED", "5000002": "KILLED"}, sweep.logs()
    assert parent.info.status == "FAILED"


def test_a_job_held_past_the_launchers_wait_is_cancelled_and_named(cluster, tmp_path) -> None:
    # Its own sweep, timed from its start: the others of the module run meanwhile.
    started = time.monotonic()
    sweep = Sweep(cluster, tmp_path / "held", ["task.steps=5", *HELD])
    status, out, err = sweep.wait(timeout=120)
    took = time.monotonic() - started
    assert status == 1, err + sweep.logs()
    assert took < 60, f"the sweep took {took:.0f} s to end after a wait of 3 s"
    assert "Traceback" not in err
    (script,) = sweep.directory.glob("outputs/multirun/*/*/.submitit/*/*_submission.sh")
    assert "#SBATCH --begin=now+1hour\n" in script.read_text()
    job_id = script.parent.name
    line = (
        f"job 0 (Slurm job {job_id}) still PENDING after the launcher's wait of 0.05 min "
        "(hydra.launcher.max_wait_min): cancelled"
    )
    assert err.strip().splitlines()[-1] == f"error: {line}"
    assert cluster.run("squeue", "--noheader", "--jobs", job_id).stdout.strip() == ""
    assert accounted_state(cluster, job_id).startswith("CANCELLED"), "Slurm did not cancel it"
    runs = runs_of(sweep.client, "minimize")
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "true"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error"] == line
    assert [run.info.run_id for run in runs] == [parent.info.run_id]  # the job never started


def test_a_device_sweep_asks_each_job_for_its_own_gpus(cluster, sweeps) -> None:
    # One array per GPU count: the cpu job's asks for none and Slurm takes it; this cluster
    # has no GPU, so Slurm refuses the cuda job's, and the cpu job is cancelled with it.
    sweep = sweeps["devices"]
    status, out, err = sweep.wait(timeout=120)
    assert status == 1, err + sweep.logs()
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: Slurm refused the array of job 1 (gpus_per_node=1): sbatch: error: Invalid "
        "generic resource (gres) specification; the jobs it had taken were cancelled"
    )
    (script,) = sweep.directory.glob("outputs/multirun/*/*/.submitit/*/*_submission.sh")
    assert "--gpus-per-node" not in script.read_text()  # the cpu job's, which Slurm took
    job_id = script.parent.name
    assert cluster.run("squeue", "--noheader", "--jobs", job_id).stdout.strip() == ""
    assert accounted_state(cluster, job_id).startswith("CANCELLED"), "Slurm did not cancel it"
    runs = runs_of(sweep.client, "minimize")
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "true"]
    assert parent.info.status == "FAILED"
    # The cpu job may have started before it was cancelled: then its run ended KILLED.
    assert {run.info.status for run in runs if run is not parent} <= {"KILLED"}


def accounted_state(cluster: Cluster, job_id: str, wait_s: float = 30.0) -> str:
    """What Slurm's accounting says became of a job (slurmdbd records it a moment later)."""
    deadline = time.monotonic() + wait_s
    while True:
        states = cluster.run(
            "sacct", "--noheader", "--parsable2", "--format=State", "--jobs", job_id
        ).stdout.split()
        if (states and states[0] not in ("PENDING", "RUNNING")) or time.monotonic() > deadline:
            return states[0] if states else ""
        time.sleep(1)


def test_a_job_past_its_time_limit_is_requeued_and_continues_its_run(sweeps) -> None:
    # max_num_timeout=1: submitit requeues the job once at its time limit, then gives up.
    # At Slurm's warning the task saves a checkpoint at its step's end, submitit requeues
    # the job, and the requeued job continues from that checkpoint, in the same MLflow run:
    # no step twice, none run again from 0. The last attempt names the time limit.
    sweep = sweeps["requeue"]
    status, out, err = sweep.wait()
    assert status == 1, err + sweep.logs()
    assert "Traceback" not in err
    parent, (run,) = sweep.split()  # one run, whatever its attempts
    assert run.info.status == "KILLED", sweep.logs()
    assert run.data.tags["error"].startswith(
        "Slurm time limit near (SIGUSR2); not requeued: Job not requeued because: "
        "timed-out too many times"
    )
    assert run.data.tags["attempt"] == "2" and run.data.tags["resumed"] == "1"
    resumed_from = int(run.data.tags["resumed_from"])
    history = sweep.client.get_metric_history(run.info.run_id, "objective/loss")
    steps = [point.step for point in history]
    assert len(steps) == len(set(steps))  # each step once
    # The second attempt went on past where the first stopped: 1 step in 100 recorded
    # (log_every=100), so the steps it ran in all are those recorded, once, not twice.
    assert resumed_from > 0 and max(steps) > resumed_from + 100, (resumed_from, max(steps))
    assert sorted(steps) == list(range(0, max(steps) + 1, 100))
    assert run.data.tags[PARENT_TAG] == parent.info.run_id
    assert parent.info.status == "FAILED"
    assert "1 job: 1 killed" in out  # one job, whatever its attempts
    assert len(sweep.job_dirs()) == 1  # one Slurm job, run twice


def test_a_search_runs_its_trials_as_slurm_jobs(sweeps) -> None:
    sweep = sweeps["search"]
    status, out, err = sweep.wait()
    assert status == 0, err + sweep.logs()
    assert "3 jobs: 3 finished" in out
    parent, jobs = sweep.split()
    assert sorted(int(job.data.tags["trial"]) for job in jobs) == [0, 1, 2]
    assert {job.data.tags[PARENT_TAG] for job in jobs} == {parent.info.run_id}
    # Each trial a Slurm job of its own: the first batch one array of two, then one job.
    names = {path.name for path in sweep.job_dirs()}
    tasks = {name for name in names if "_" in name}
    arrays = {name.split("_")[0] for name in tasks}
    assert len(tasks) == 2 and len(arrays) == 1, names
    assert len(names - tasks - arrays) == 1, names
    # Beside the sweep's mlflow.db, in Optuna's journal file: the nodes share it over NFS.
    assert not (sweep.directory / "optuna.db").exists()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep.directory / "optuna.journal"))
    )
    study = optuna.load_study(study_name=parent.data.tags["search.study"], storage=storage)
    assert [trial.state.name for trial in study.get_trials()] == ["COMPLETE"] * 3


def test_two_searches_as_slurm_jobs_share_one_study(cluster, sweeps) -> None:
    job_ids = sweeps["shared_search"]
    for job_id in job_ids:
        assert accounted_state(cluster, job_id, wait_s=240) == "COMPLETED", job_id
    directory = next(iter(sweeps.values())).directory.parent / "shared_search"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(directory / "study.journal"))
    )
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    complete = sorted(t.number for t in trials if t.state.name == "COMPLETE")
    assert len(complete) == 6  # n_trials in all, not 6 for each search
    others = [t for t in trials if t.state.name != "COMPLETE"]
    assert all(t.user_attrs.get("experiments.surplus") for t in others)  # asked, never run
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    runs = runs_of(client, "minimize")
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("sweep") == "true"}
    assert {p.data.tags["slurm_job"] for p in parents.values()} == set(job_ids)
    children = [r for r in runs if r.info.run_id not in parents]
    assert sorted(int(r.data.tags["trial"]) for r in children) == complete  # each run once
    for run in children:  # by its own command: the parent in the same Slurm job
        parent = parents[run.data.tags[PARENT_TAG]]
        assert run.data.tags["slurm_job"] == parent.data.tags["slurm_job"]
        assert run.info.status == "FINISHED"
