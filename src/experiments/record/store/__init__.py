"""The store side of the record path: everything that talks to MLflow.

Only the recording process and the commands that read or write a store themselves
(``experiments.sync``, ``experiments.report``) import these modules; a run's own process
never does, so it never imports MLflow.

- ``tracker``: opening a store (a server's health, SQLite's first migration under a lock),
  its experiments, creating runs, reopening one to continue it, closing lost ones.
- ``upload``: a journal into a run, resumably and idempotently (``Uploader``, ``deliver``),
  and an earlier attempt's journals in first when a run is continued (``drain``).
- ``bulk``: metric points into a SQLite or PostgreSQL store, one statement per table.
- ``failures``: whether a failed store call is worth retrying, and how it reads.

It imports MLflow, the rest of the record path and the shared modules (``errors``,
``names``), nothing above them.
"""
