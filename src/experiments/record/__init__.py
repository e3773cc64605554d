"""The record path: everything a run records, from its journal to the tracking store.

Local first, then upload. Every record of a run (params, tags, metric points, artifacts, its
end) is appended to a journal in the run's own directory; one uploader turns the journal into
MLflow calls, in a second process while the run goes on (the recording process), or later
with ``python -m experiments.sync``. Nothing recorded is lost with a process or a store.

The run's side (imports no MLflow):

- ``live``: a run while it executes: :func:`open_run`, then :meth:`LiveRun.started`, the
  task records through ``LiveRun.recorder``, :meth:`LiveRun.close`. Also :func:`adopt` (close
  the run of a journal whose process is gone) and :func:`call` (have the recording process
  do something with a store client, named as data).
- ``recorder``: the task's records into the journal (``JournalRecorder``).
- ``journal``: the journal's format (JSON Lines, documented there), its writer and reader.
- ``marks``: how far a journal has reached its store (``journal.uploaded.json``).
- ``client``: the run's side of the pipe to the recording process.
- ``pictures``: which pickled figures the recording process may draw (matplotlib's alone).
- ``liveness``: which process on which host writes a run, its heartbeat, lost runs.
- ``uris``: which store (``tracking.uri``, ``MLFLOW_TRACKING_URI``, MLflow's default), made
  absolute, passwords removed from everything written or logged.

The other side:

- ``service``: the recording process (``python -m experiments.record.service``).
- ``store``: what talks to MLflow: the tracker, the uploader, bulk metric writes, failures.
- ``sync``: ``python -m experiments.sync``, the same uploader after the fact.

What it exposes: the names below, and the modules above. What it may import: the shared
modules at the top of the package (``errors``, ``names``, ``process``, ``signals``), never
the runner, the tasks, the sweeps or the command line; what it does for them (a sweep's
report) is handed over by name (:func:`call`).
"""

from experiments.record.live import (
    Delivery,
    LiveRun,
    PendingDelivery,
    Settings,
    Store,
    adopt,
    call,
    open_run,
)

__all__ = [
    "Delivery",
    "LiveRun",
    "PendingDelivery",
    "Settings",
    "Store",
    "adopt",
    "call",
    "open_run",
]
