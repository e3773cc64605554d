"""The confusion matrix of the validation set, as a matplotlib figure (object API)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def confusion_figure(matrix: np.ndarray, accuracy: float) -> Figure:
    """Actual class (rows) against predicted (columns); each count written in its cell."""
    figure = Figure(figsize=(6, 5.2), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8, label="validation images")
    classes = range(matrix.shape[0])
    ax.set(
        xticks=list(classes),
        yticks=list(classes),
        xlabel="predicted digit",
        ylabel="actual digit",
        title=f"confusion matrix (validation accuracy {accuracy:.3f})",
    )
    high = matrix.max() / 2
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            color = "white" if count > high else "black"
            ax.text(column, row, str(count), ha="center", va="center", color=color, fontsize=8)
    return figure
