"""Minimise an expression with any ``torch.optim`` optimizer (the tutorial's 最適化 section).

Defaults reproduce the tutorial: ``3*x**2 + 6*x - 9`` from x = 10 with SGD at lr 0.1 ends at
x = -1.0000 after 20 steps. Each step records the state it starts from (step 0 is the
start); one more point after the last step records where the optimizer ended.
"""

from __future__ import annotations

import logging
import time
from array import array
from dataclasses import dataclass, field

import numpy as np
import torch

from experiments import optimizers
from experiments.errors import RunFailure
from experiments.names import objective, result
from experiments.tasks.context import TaskContext
from experiments.tasks.expressions import Expression, parse
from experiments.tasks.minimize import plots
from experiments.tasks.minimize.progress import Progress
from experiments.tasks.minimize.settings import MinimizeConfig

log = logging.getLogger(__name__)

LOSS, GRAD_NORM = objective("loss"), result("grad_norm")  # the objective run() returns


@dataclass
class Trajectory:
    """The recorded state of each step: loss, gradient norm and every variable.

    Kept in flat arrays of machine numbers, which a checkpoint copies in microseconds
    (Python lists of 20,000 floats take milliseconds to turn into tensors).
    """

    names: list[str]
    steps: array = field(default_factory=lambda: array("q"))
    loss: array = field(default_factory=lambda: array("d"))
    grad_norm: array = field(default_factory=lambda: array("d"))
    flat: array = field(default_factory=lambda: array("d"))  # every variable, step by step

    def add(self, step: int, loss: float, grad_norm: float, values: list[float]) -> dict:
        self.steps.append(step)
        self.loss.append(loss)
        self.grad_norm.append(grad_norm)
        self.flat.extend(values)
        return {
            LOSS: loss,
            GRAD_NORM: grad_norm,
            **{f"var/{name}": value for name, value in zip(self.names, values)},
        }

    @property
    def values(self) -> np.ndarray:
        """Every variable at each step: one row per step, one column per variable."""
        return np.array(self.flat, dtype=np.float64).reshape(-1, len(self.names))

    def state(self) -> dict[str, torch.Tensor]:
        """The path so far, as a checkpoint holds it (copies)."""
        return {
            "steps": torch.from_numpy(np.array(self.steps, dtype=np.int64)),
            "loss": torch.from_numpy(np.array(self.loss, dtype=np.float64)),
            "grad_norm": torch.from_numpy(np.array(self.grad_norm, dtype=np.float64)),
            "values": torch.from_numpy(np.array(self.flat, dtype=np.float64)),
        }

    @classmethod
    def from_state(cls, names: list[str], state: dict[str, torch.Tensor]) -> Trajectory:
        """The path a checkpoint holds (:meth:`state`)."""
        found = cls(names)
        found.steps.frombytes(state["steps"].numpy().astype(np.int64).tobytes())
        for key, target in (("loss", found.loss), ("grad_norm", found.grad_norm)):
            target.frombytes(state[key].numpy().astype(np.float64).tobytes())
        found.flat.frombytes(state["values"].numpy().astype(np.float64).ravel().tobytes())
        return found


def run(cfg: MinimizeConfig, ctx: TaskContext) -> float:
    """Minimise ``cfg.expr`` from ``cfg.init``; record the path; return the final loss."""
    expression = parse(cfg.expr)
    names = [name for name in cfg.init if name in expression.variables]
    unused = [name for name in cfg.init if name not in expression.variables]
    if unused:
        log.warning("task.init sets %s, which task.expr does not use", ", ".join(unused))
    dtype = getattr(torch, cfg.dtype)
    params = {
        name: torch.tensor(cfg.init[name], dtype=dtype, device=ctx.device, requires_grad=True)
        for name in names
    }
    optimizer = optimizers.build(ctx.optim)(list(params.values()))
    start, trajectory = _resume(ctx, params, optimizer, names)

    started = time.perf_counter()
    trajectory, reason = _optimise(expression, params, optimizer, cfg, ctx, start, trajectory)
    ctx.recorder.log_metrics({"time/optimize_s": time.perf_counter() - started})
    ctx.recorder.log_metrics({result("steps_run"): trajectory.steps[-1]})
    ctx.recorder.set_tags({"stop_reason": reason})

    started = time.perf_counter()
    _plot(expression, trajectory, ctx)
    ctx.recorder.log_metrics({"time/plot_s": time.perf_counter() - started})
    final = ", ".join(f"{n}={v:.4f}" for n, v in zip(names, trajectory.flat[-len(names) :]))
    log.info(
        "minimize: %s after %d steps, loss %.6g", final, trajectory.steps[-1], trajectory.loss[-1]
    )
    return trajectory.loss[-1]


def _resume(
    ctx: TaskContext,
    params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    names: list[str],
) -> tuple[int, Trajectory]:
    """Where to start: step 0, or the run's latest checkpoint (its point, its optimizer's
    state, the path so far; the random generators as they were)."""
    found = ctx.checkpoints.latest() if ctx.checkpoints is not None else None
    if found is None:
        return 0, Trajectory(names)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(found.state["params"][name])
    optimizer.load_state_dict(found.state["optimizer"])
    trajectory = Trajectory.from_state(names, found.state["trajectory"])
    log.info("minimize: continues from its checkpoint at step %d", found.step)
    return found.step, trajectory


def _state(
    params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, trajectory: Trajectory
) -> dict:
    """What a checkpoint holds: the point, the optimizer's state, the path so far."""
    return {
        "params": {name: param.detach().clone() for name, param in params.items()},
        "optimizer": optimizer.state_dict(),
        "trajectory": trajectory.state(),
    }


def _optimise(
    expression: Expression,
    params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    cfg: MinimizeConfig,
    ctx: TaskContext,
    start: int,
    trajectory: Trajectory,
) -> tuple[Trajectory, str]:
    first: dict[str, torch.Tensor] = {}
    checkpoints = ctx.checkpoints

    def closure() -> torch.Tensor:
        # Some optimizers (L-BFGS) evaluate several times per step; the first evaluation
        # is at the point the step starts from, which is what the step records.
        optimizer.zero_grad()
        loss = expression.evaluate(params)
        loss.backward()
        if not first:
            first["loss"] = loss.detach()
            first["grad_norm"] = _grad_norm(params)
        return loss

    progress = Progress(cfg.steps, "minimize")
    try:
        for step in range(start, cfg.steps):
            first.clear()
            snapshot = [float(p.detach()) for p in params.values()]
            optimizer.step(closure)
            loss, grad_norm = float(first["loss"]), float(first["grad_norm"])
            point = trajectory.add(step, loss, grad_norm, snapshot)
            _check_finite(point, step, snapshot, trajectory.names, ctx)
            if step % ctx.log_every == 0:
                ctx.recorder.log_metrics(point, step=step)
            ctx.recorder.report(loss, step)  # a search's pruner may stop the trial here
            progress.update(step + 1, loss=loss)
            if cfg.tol is not None and grad_norm < cfg.tol:
                # converged at the point this step started from; the step has moved on from
                # it already, so the final point recorded is the one after this update
                return _finish(trajectory, params, expression, step + 1, ctx), "tol"
            if ctx.stop_requested:  # a signal: this step is whole; save it, then stop
                if checkpoints is not None:
                    checkpoints.save(step + 1, _state(params, optimizer, trajectory), wait=True)
                ctx.stop()
            if checkpoints is not None and checkpoints.due(step + 1):
                checkpoints.save(step + 1, _state(params, optimizer, trajectory))
    finally:
        progress.close()
    return _finish(trajectory, params, expression, cfg.steps, ctx), "steps"


def _finish(
    trajectory: Trajectory,
    params: dict[str, torch.Tensor],
    expression: Expression,
    step: int,
    ctx: TaskContext,
) -> Trajectory:
    """Record the point the optimizer ended at, after its last update."""
    for param in params.values():
        param.grad = None
    loss = expression.evaluate(params)
    loss.backward()
    values = [float(p.detach()) for p in params.values()]
    point = trajectory.add(step, float(loss.detach()), float(_grad_norm(params)), values)
    _check_finite(point, step, values, trajectory.names, ctx)
    ctx.recorder.log_metrics(point, step=step)
    return trajectory


def _grad_norm(params: dict[str, torch.Tensor]) -> torch.Tensor:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params.values()]
    return torch.linalg.vector_norm(torch.stack(grads))


def _check_finite(
    point: dict, step: int, values: list[float], names: list[str], ctx: TaskContext
) -> None:
    if all(np.isfinite(list(point.values()))):
        return
    ctx.recorder.log_metrics({k: v for k, v in point.items() if np.isfinite(v)}, step=step)
    where = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values))
    raise RunFailure(
        f"diverged: loss={point[LOSS]:.4g}, grad_norm={point[GRAD_NORM]:.4g} at step {step} "
        f"({where}); try a smaller optim.lr"
    )


def _plot(expression: Expression, trajectory: Trajectory, ctx: TaskContext) -> None:
    path = np.asarray(trajectory.values, dtype=float)
    names = trajectory.names
    f = _numpy_function(expression)
    if len(names) == 1:
        figure = plots.curve_with_path(f, names[0], path[:, 0], trajectory.loss, expression.text)
        ctx.recorder.log_figure(figure, "function.png")
    elif len(names) == 2:
        figure = plots.contour_with_path(f, names, path, expression.text)
        ctx.recorder.log_figure(figure, "contour.png")
    figure = plots.loss_curve(trajectory.steps, trajectory.loss, trajectory.grad_norm)
    ctx.recorder.log_figure(figure, "loss.png")


def _numpy_function(expression: Expression) -> plots.Function:
    def f(values: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {
            name: torch.as_tensor(array, dtype=torch.float64) for name, array in values.items()
        }
        with torch.no_grad(), np.errstate(all="ignore"):
            result = expression.evaluate(tensors)
        return np.broadcast_to(result.numpy(), next(iter(values.values())).shape)

    return f
