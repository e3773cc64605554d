"""The report: ``python -m experiments.report``, the comparison of a sweep's or an experiment's
runs, read back from MLflow; also made at the end of every sweep (:func:`publish`).

- ``command``: the command line.
- ``selection``: which runs (a sweep's jobs, an experiment, the newest sweep).
- ``assemble``: the report built from the runs, written, logged into the parent run; each
  task's own figures come from its ``Task.report``, named by the sweep or the registry.
- ``tables`` and ``figures``: the table of every run, and the figures every task gets (its
  objective against what the runs vary, its history).

It reads runs through an ``MlflowClient``, so it runs where MLflow is loaded: in its own
command, or in the recording process at a sweep's end; never in a run's own process. It may
import the record path (its store side, to open a store), ``reproduce`` (``--compare``
shares a rerun's verdict), the task API and registry (a task's declaration: its figures'
function, named; no task's run is imported) and the shared modules; never the runner or
the rest of the sweeps.
"""
