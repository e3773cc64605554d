"""The report: ``python -m experiments.report``, the comparison of a sweep's or an experiment's
runs, read back from MLflow; also made at the end of every sweep (:func:`publish`).

- ``command``: the command line.
- ``selection``: which runs (a sweep's jobs, an experiment, the newest sweep).
- ``assemble``: the report built from the runs, written, logged into the parent run.
- ``tables`` and ``figures``: what it shows, per task.

It reads runs through an ``MlflowClient``, so it runs where MLflow is loaded: in its own
command, or in the recording process at a sweep's end; never in a run's own process. It may
import the record path (its store side, to open a store), ``reproduce`` (``--compare``
shares a rerun's verdict) and the shared modules; never the runner, the tasks or the rest
of the sweeps.
"""
