"""The training loop of ``task=digits``: what ``TASK.run`` names.

The data are scikit-learn's 8x8 digits (1,797 images, 10 classes, inside the package: no
download), split into training and validation by the run's seed, standardised on the
training part. Each epoch records its training and validation loss and accuracy (the
validation accuracy is the objective: ``objective/val_accuracy``), reports it to a search's
pruner, checkpoints the model and the optimizer when ``checkpoint.*`` says (and at a stop),
and stops cleanly at its end when a signal asked the run to stop. A run continued (a requeued
job, ``python -m experiments.resume``) starts from its last checkpoint. At the end: the
validation set's confusion matrix, as a figure.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from experiments import optimizers
from experiments.api import TaskContext
from experiments_digits.plots import confusion_figure
from experiments_digits.settings import DigitsSettings

log = logging.getLogger(__name__)

CLASSES = 10


def prepare() -> None:
    """What the first epoch would import, done while the run's store opens."""
    import sklearn.datasets  # noqa: F401

    optimizers.warm_up()


def run(cfg: DigitsSettings, ctx: TaskContext) -> float:
    """Train, record every epoch, draw the confusion matrix; return the last validation
    accuracy."""
    train, val = split(cfg.val_fraction, ctx.generator)
    model = mlp(cfg).to(ctx.device)
    optimizer = optimizers.build(ctx.optim)(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    x_train, y_train = (t.to(ctx.device) for t in train)
    x_val, y_val = (t.to(ctx.device) for t in val)
    ctx.recorder.log_params({"data.train": len(y_train), "data.val": len(y_val)})
    best, best_epoch, accuracy, start = -1.0, 0, 0.0, 0
    found = ctx.checkpoints.latest() if ctx.checkpoints is not None else None
    if found is not None:  # a run continued (requeued, resumed): from its last epoch saved
        model.load_state_dict(found.state["model"])
        optimizer.load_state_dict(found.state["optimizer"])
        best, best_epoch, start = found.state["best"], found.state["best_epoch"], found.step
    started = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        train_loss, train_accuracy = fit_epoch(
            model, optimizer, loss_fn, x_train, y_train, cfg, ctx
        )
        val_loss, accuracy, _ = evaluate(model, loss_fn, x_val, y_val)
        if accuracy > best:
            best, best_epoch = accuracy, epoch
        ctx.recorder.log_metrics(
            {
                "objective/val_accuracy": accuracy,
                "result/val_loss": val_loss,
                "result/train_loss": train_loss,
                "result/train_accuracy": train_accuracy,
            },
            step=epoch,
        )
        ctx.recorder.report(accuracy, epoch)  # a search's pruner may stop the trial here
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best": best,
            "best_epoch": best_epoch,
        }
        if ctx.stop_requested:  # a signal: stop at this epoch's end, its records complete
            if ctx.checkpoints is not None:
                ctx.checkpoints.save(epoch + 1, state, wait=True)  # continued from here
            log.info("digits: stopped after epoch %d of %d", epoch + 1, cfg.epochs)
            ctx.stop()
        if ctx.checkpoints is not None and ctx.checkpoints.due(epoch + 1):
            ctx.checkpoints.save(epoch + 1, state)
    epochs_s = time.perf_counter() - started  # every epoch, its records included
    _, accuracy, predicted = evaluate(model, loss_fn, x_val, y_val)
    ctx.recorder.log_metrics(
        {
            "result/best_val_accuracy": best,
            "result/best_epoch": best_epoch,
            "time/epochs_s": epochs_s,
            "time/epoch_s": epochs_s / cfg.epochs,
        }
    )
    matrix = confusion(y_val.cpu().numpy(), predicted.cpu().numpy())
    ctx.recorder.log_figure(confusion_figure(matrix, accuracy), "confusion.png")
    log.info("digits: validation accuracy %.4f after %d epochs", accuracy, cfg.epochs)
    return accuracy


def split(
    val_fraction: float, generator: torch.Generator
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The digits, shuffled by ``generator``, split and standardised on the training part."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=generator)
    cut = int(round(len(y) * (1 - val_fraction)))
    train, val = order[:cut], order[cut:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    return ((x[train] - mean) / std, y[train]), ((x[val] - mean) / std, y[val])


def mlp(cfg: DigitsSettings) -> nn.Module:
    """64 inputs, ``layers`` hidden layers of ``hidden`` units (ReLU, dropout), 10 outputs."""
    parts: list[nn.Module] = []
    width = 64
    for _ in range(cfg.layers):
        parts += [nn.Linear(width, cfg.hidden), nn.ReLU()]
        if cfg.dropout:
            parts.append(nn.Dropout(cfg.dropout))
        width = cfg.hidden
    parts.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*parts)


def fit_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DigitsSettings,
    ctx: TaskContext,
) -> tuple[float, float]:
    """One pass over the training data in shuffled batches; its mean loss and accuracy."""
    model.train()
    order = torch.randperm(len(y), generator=ctx.generator).to(y.device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        optimizer.zero_grad()
        logits = model(x[batch])
        loss = loss_fn(logits, y[batch])
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(batch)
        correct += int((logits.argmax(1) == y[batch]).sum())
    return total_loss / len(y), correct / len(y)


@torch.no_grad()
def evaluate(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float, torch.Tensor]:
    """Loss, accuracy and the predicted classes on ``x``."""
    model.eval()
    logits = model(x)
    predicted = logits.argmax(1)
    return float(loss_fn(logits, y)), float((predicted == y).float().mean()), predicted


def confusion(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of each (actual, predicted) class pair."""
    matrix = np.zeros((CLASSES, CLASSES), dtype=int)
    np.add.at(matrix, (actual, predicted), 1)
    return matrix
