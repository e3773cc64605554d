"""``task=derivative``: f and its derivatives at a point, with autograd, checked by sympy.

``TASK`` registers it (imports no torch); ``settings`` holds its settings, ``task`` runs it,
``autograd`` computes the values, ``symbolic`` checks each against sympy at the exact point,
``plots`` draws the figures, and ``report`` its table in a sweep's report, all for this task.
"""

from experiments.api import Task
from experiments.tasks.derivative.settings import DerivativeConfig

TASK = Task(
    name="derivative",
    settings=DerivativeConfig,
    run="experiments.tasks.derivative.task:run",
    objective="f",  # f at the point
    table=("sympy/max_rel_err",),  # the worst error against sympy, beside f in the report
    report="experiments.tasks.derivative.report:figures",
)
