"""A search: Optuna's ask-and-tell over a sweep's jobs (``hydra/sweeper=optuna``).

- ``space``: the search space, from ``hydra.sweeper.params`` and the command line.
- ``study``: where the study is stored, which of its trials count, trials left by a search
  that is gone.
- ``loop``: the search itself: batches of trials through the sweep's launcher, each told
  its job's objective (or that its pruner stopped it), ``optimization_results.yaml`` at the end.
- ``trial``: a trial's side, in its job's process: the objective it reports at its steps,
  and the pruner's verdict (the runner's recorder asks it; the task never sees Optuna).

The Hydra plugin (``hydra_plugins.experiments_sweeper``) is its entry. Optuna is imported
only when a search runs. It may import the record path's run side (``uris``, ``liveness``:
which process holds a trial), ``sweeps.launching`` (whether the jobs run in this process),
``sweeps.outcomes`` (a trial's job's outcome), the task registry (the selected task's
direction: its declaration, not the task's code) and the shared modules; never the runner
or a task's modules.
"""
