"""Reproducing a result: run a recorded run again from its record, and say whether it held.

- ``records``: what a run's record holds to run it again (its overrides, its experiment,
  where it ran), read back from a store; the refusals when it cannot be.
- ``compare``: the verdict on two runs, or two sweeps: settings, environment, results
  (bit for bit where the task is deterministic, against the measured spread for a timing).
  ``python -m experiments.report --compare A B`` prints it for runs that exist.
- ``command``: ``python -m experiments.rerun RUN_ID [OVERRIDES ...]``: the rerun itself, as
  the command line (``python -m experiments``) in a process of its own, then the verdict,
  printed and logged into the new run (``rerun.txt``, tag ``reproduced``).
- ``resume``: ``python -m experiments.resume RUN_ID``: a run stopped, killed or preempted,
  continued from its checkpoint as the same run (the command line again, asked to).

The verdict's policy is the task's (``Task.verdict``), read from the run's ``verdict`` tag,
or the task registry for a run recorded before it. It reads stores with MLflow's client, and
starts the command as a process: it imports neither the command line nor the runner, so a
rerun runs exactly what a user would type.
It may import the shared modules (``errors``, ``names``, ``process``, ``config``,
``checkpoints``, the task API and registry) and the record path's ``uris``, liveness and
store access.
"""
