"""The recording process: the one process that talks to MLflow for a command's runs.

A run's own process never imports MLflow. It writes its journal (``experiments.journal``)
and asks this process, over a pipe, to open the store, create the run and upload the
journal as it grows (``client``: the run's side; ``service``: this process's side). It
is started first thing, so that importing MLflow and opening the store overlap with the
run's own start-up; uploads then overlap with the task, and the task never waits for
them. It is also the runs' watchdog: when the process it serves dies without closing its
runs, it uploads what their journals hold and closes them as lost at once.

One recording process serves every run of its process: a single run, or every job of a
sweep that runs in the launching process, its parent run included. Each parallel worker
(a joblib worker, a submitit job) starts its own on its first job, so a worker that dies
is noticed by its own recording process, and uploads run in parallel as the jobs do.
"""
