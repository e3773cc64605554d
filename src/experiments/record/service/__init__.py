"""The recording process: the one process that talks to MLflow for a command's runs.

A run's own process never imports MLflow. It writes its journal (``record.journal``) and
asks this process, over a pipe (``record.client``: the run's side), to open the store,
create the run and upload the journal as it grows. It is started first thing, so that
importing MLflow and opening the store overlap with the run's own start-up; uploads then
overlap with the task, and the task never waits for them. It is also the runs' watchdog:
when the process it serves dies without closing its runs, it uploads what their journals
hold and closes them as lost at once.

One recording process serves every run of its process: a single run, or every job of a
sweep that runs in the launching process, its parent run included. Each parallel worker
(a joblib worker, a submitit job) starts its own on its first job, so a worker that dies
is noticed by its own recording process, and uploads run in parallel as the jobs do.

It ignores SIGINT, SIGTERM and SIGHUP: a terminal's Ctrl-C or a cluster's ``scancel``
reaches the run's process, which ends its runs and then lets this process finish their
uploads. It ignores SIGUSR1 and SIGUSR2 too: Slurm sends submitit's warning of a time limit
or a preemption to every process of the job, and their default action would end this one
before the run's end is uploaded.

- ``__main__``: the process's set-up (signals, collector, standard streams, logging).
- ``loop``: the requests and the one loop that serves them.
- ``watch``: one journal being uploaded, and how its store is retried.
- ``figures``: drawing the figures a run pickled.

It uses the store side (``record.store``) and the journal; it imports nothing of the
runner, the tasks or the sweeps (what it does for them is handed over by name, see
``record.live.call``).
"""
