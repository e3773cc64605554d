"""``task=matmul``: time a matrix product on one device.

``TASK`` registers it (imports no torch); ``settings`` holds its settings, ``task`` runs it,
``report`` draws its figures in a sweep's report; ``timing`` measures one product properly
(warm-up, synchronisation, adaptive repeats) and needs only torch, so
``benchmarks/gpu_check.sh`` runs it on a bare machine (nothing there imports more).
"""

from experiments.api import Task, Timing
from experiments.tasks.matmul.settings import MatmulConfig

TASK = Task(
    name="matmul",
    settings=MatmulConfig,
    run="experiments.tasks.matmul.task:run",
    objective="time_ms",  # the median time of one warm product: a sweep's best is the least
    direction="minimize",
    prepare="experiments.tasks.matmul.task:prepare",  # torch's benchmark timer
    resolved_params="experiments.tasks.matmul.task:resolved_params",  # shape and threads
    threads="threads",  # task.threads sets the CPU threads it times with
    verdict=Timing(spread="time_iqr_ms"),  # the same within the measured spread (IQR)
    report="experiments.tasks.matmul.report:figures",
    table=("gflops",),
)
