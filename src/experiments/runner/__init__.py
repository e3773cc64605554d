"""The runner: one run end to end, the layer between the sweeps and the tasks.

It validates a composed config, opens the run's record (``experiments.record``), hands the
task its context and recorder, and ends the run FINISHED, FAILED or KILLED in a ``finally``.
It needs no Hydra: tests and scripts call :func:`run` or :func:`execute` with a composed
config.

- ``execution``: :func:`execute` and what it returns (:class:`Result`).
- ``identity``: what a run says about itself (params, first tags, name, config hash).
- ``environment``: where it ran (``environment.json``: packages, BLAS, CPU, GPU, code).
- ``store``: where it is recorded, in the record path's terms.

It imports the tasks, the record path and the shared modules; never the sweeps or the
command line.
"""

from experiments.config import config_hash
from experiments.runner.execution import (
    Result,
    execute,
    prepare,
    record_environment,
    reproduce_note,
    run,
    torch_settings_kept,
)
from experiments.runner.store import journal_header, live_settings, not_recorded_line, store_of

__all__ = [
    "Result",
    "config_hash",
    "execute",
    "journal_header",
    "live_settings",
    "not_recorded_line",
    "prepare",
    "record_environment",
    "reproduce_note",
    "run",
    "store_of",
    "torch_settings_kept",
]
