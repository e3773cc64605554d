"""Sweeps: one MLflow parent run per multirun, a child run per job, a summary and a report.

- ``callback``: the sweep's life in the launching process (Hydra's callback): the parent run
  opened before any job, closed at the end with the summary and the report.
- ``parent``: what the sweep shares with its jobs through its directory (the parent run, the
  keys it varies, whether it was stopped), and how a job's run is named.
- ``outcomes``: what became of each job (``outcome.json`` in its directory).
- ``summary``: the summary printed at the end: the table of jobs, the best one, where to
  review the sweep.
- ``launching``: what the launcher decides for the jobs before they start (each parallel
  worker's share of the cores; a SQLite store that a cluster's nodes would share).
- ``stopping``: closing what jobs left open, after a signal or a dead process.
- ``resume``: ``skip_existing`` decided in the launching process, for a launcher that
  submits jobs elsewhere (the Slurm launcher queues only the jobs not FINISHED).
- ``report``: ``python -m experiments.report``, the comparison of a sweep's runs, also made
  at the end of every sweep (in the recording process, where MLflow is loaded).
- ``search``: ``hydra/sweeper=optuna``'s search: its space, its stored study, the
  ask-and-tell loop over the sweep's launcher (the Hydra plugin in
  ``hydra_plugins.experiments_sweeper`` is its entry).

Sweeps sit on the runner (``prepare``, ``record_environment``, where a run is recorded), the
record path and ``reproduce`` (``report --compare`` gives a rerun's verdict); the command
line sits on them. Nothing here imports the command line, and
nothing below imports this package (the recording process calls ``report.assemble.publish``
by name).

Importing this package imports none of its modules: the recording process imports
``report.assemble`` to make a sweep's report, and must not load the runner (and torch) with
it. Import the modules themselves (``from experiments.sweeps import callback``).
"""
