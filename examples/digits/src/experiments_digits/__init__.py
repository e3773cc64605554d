"""``task=digits``: a small MLP classifier on scikit-learn's 8x8 digits, with torch.

A task of one's own, registered as the built-in ones are (``experiments.api``): ``TASK`` is
what the entry point ``experiments.tasks: digits`` names. This module is read by every part
of the pipeline (a sweep's launching process, the report's process), so it imports neither
torch nor scikit-learn: the training loop is in :mod:`.train`, named by ``run``.
"""

from experiments.api import Task, Tolerance
from experiments_digits.settings import DigitsSettings

TASK = Task(
    name="digits",
    settings=DigitsSettings,
    run="experiments_digits.train:run",
    objective="val_accuracy",  # the validation accuracy after the last epoch
    direction="maximize",  # a sweep's best job and a search's aim: the highest
    uses_optimizer=True,  # optim=adam optim.lr=0.01: any torch.optim class, from the optim group
    prepare="experiments_digits.train:prepare",  # torch.nn and scikit-learn, while the store opens
    # A rerun on the same machine repeats every epoch bit for bit; elsewhere (another BLAS,
    # other threads) sums may round otherwise: within a millionth is the same result.
    verdict=Tolerance(rel=1e-6, abs=1e-9),
    report="experiments_digits.report:figures",
    table=("train_accuracy", "best_epoch"),
)
