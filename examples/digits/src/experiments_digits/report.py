"""The digits task's own part of a sweep's report (``TASK.report``): the training and the
validation accuracy of every run per epoch, side by side, where overfitting shows. Drawn
without torch, from the runs the report hands it (``experiments.api.ReportRun``)."""

from __future__ import annotations

from typing import Any, Sequence

from matplotlib.figure import Figure


def figures(runs: Sequence[Any]) -> dict[str, Any]:
    """``digits_accuracy.png``: train and validation accuracy per epoch, per FINISHED run."""
    finished = [run for run in runs if run.status == "FINISHED"]
    if not finished:
        return {}
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    train_ax, val_ax = figure.subplots(1, 2, sharey=True)
    for run in finished:
        for ax, key in ((train_ax, "result/train_accuracy"), (val_ax, "objective/val_accuracy")):
            points = run.history(key)
            shown = [value for _, value in points]
            ax.plot([step for step, _ in points], shown, label=run.name)  # what the sweep varied
    train_ax.set(title="training accuracy", xlabel="epoch", ylabel="accuracy")
    val_ax.set(title="validation accuracy (the objective)", xlabel="epoch")
    for ax in (train_ax, val_ax):
        ax.grid(True, alpha=0.4)
    if len(finished) <= 20:
        val_ax.legend(fontsize="x-small", loc="lower right")
    return {"digits_accuracy.png": figure}
