"""The hand-written baseline of the digits example: the same training loop, logged to MLflow
by hand.

What a user writes without the pipeline: the example's own data split, model and epoch
(``experiments_digits.train``: the same code, so only the recording differs), one
``mlflow.log_metrics`` call per epoch with the same four values, the run's settings as
params, the confusion matrix through ``mlflow.log_figure``. It prints the time per epoch,
the loop's records included, as the example records it (``time/epoch_s``).
``bench_digits.py`` times the two side by side.

Usage: python benchmarks/baseline_digits.py [EPOCHS]   (MLflow's default store, ./mlflow.db)
"""

import argparse
import random
import time

import mlflow
import numpy as np
import torch
from experiments_digits.plots import confusion_figure
from experiments_digits.settings import DigitsSettings
from experiments_digits.train import confusion, evaluate, fit_epoch, mlp, split
from torch import nn


class Context:  # what fit_epoch takes from a run's context: its generator
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)


def main(epochs: int, lr: float) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    cfg = DigitsSettings(epochs=epochs)
    ctx = Context(0)
    mlflow.set_experiment("baseline-digits")
    with mlflow.start_run():
        mlflow.log_params({"hidden": cfg.hidden, "epochs": epochs, "lr": lr, "optimizer": "Adam"})
        train, val = split(cfg.val_fraction, ctx.generator)
        model = mlp(cfg)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        started = time.perf_counter()
        for epoch in range(epochs):
            train_loss, train_accuracy = fit_epoch(model, optimizer, loss_fn, *train, cfg, ctx)
            val_loss, accuracy, _ = evaluate(model, loss_fn, *val)
            mlflow.log_metrics(
                {
                    "val_accuracy": accuracy,
                    "val_loss": val_loss,
                    "train_loss": train_loss,
                    "train_accuracy": train_accuracy,
                },
                step=epoch,
            )
        epochs_s = time.perf_counter() - started
        _, accuracy, predicted = evaluate(model, loss_fn, *val)
        matrix = confusion(val[1].numpy(), predicted.numpy())
        mlflow.log_figure(confusion_figure(matrix, accuracy), "confusion.png")
        mlflow.log_metric("epoch_s", epochs_s / epochs)
    print(f"epoch_s={epochs_s / epochs:.6f} val_accuracy={accuracy:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("epochs", type=int, nargs="?", default=30)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    main(args.epochs, args.lr)
