"""``task=minimize``: minimise an expression with any ``torch.optim`` optimizer.

``TASK`` registers it (this package's ``experiments.tasks`` entry point): read by every part,
so it imports no torch; ``settings`` holds its settings, ``task`` runs it, ``plots`` draws
its figures and ``progress`` its one-line progress display on a terminal, ``report`` its
figures in a sweep's report, all for this task only.
"""

from experiments.api import Task
from experiments.tasks.minimize.settings import MinimizeConfig

TASK = Task(
    name="minimize",
    settings=MinimizeConfig,
    run="experiments.tasks.minimize.task:run",
    objective="loss",  # the final loss: what a sweep ranks and a search minimises
    direction="minimize",
    uses_optimizer=True,  # the run records the optim.* settings as params
    prepare="experiments.optimizers:warm_up",  # torch.optim's imports, while the store opens
    report="experiments.tasks.minimize.report:figures",
)
