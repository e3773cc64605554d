"""f and its derivatives at a point with ``torch.autograd.grad(..., create_graph=True)``.

f, every first and second partial derivative (each mixed pair once) and, for ``order`` > 2,
the pure higher derivatives of each variable; each is derived from the one before it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from experiments.tasks.expressions import Expression

Wrt = tuple[str, ...]
"""The variables a derivative is taken by, in order: ``()`` is f, ``("x", "y")`` d2f/dxdy."""


def metric_name(wrt: Wrt) -> str:
    """The metric's name: ``f``, ``df_dx``, ``d2f_dxdy`` for ``("x", "y")``, ``d3f_dx3`` ..."""
    if not wrt:
        return "f"
    if len(wrt) == 1:
        return f"df_d{wrt[0]}"
    if len(set(wrt)) == 1:
        return f"d{len(wrt)}f_d{wrt[0]}{len(wrt)}"
    return f"d{len(wrt)}f_" + "".join(f"d{name}" for name in wrt)


def derivatives_to_compute(names: Sequence[str], order: int) -> list[Wrt]:
    """f, the gradient, the Hessian's upper triangle (order >= 2), then pure n-th derivatives.

    Every entry's prefix comes before it, so each can be derived from an earlier one.
    """
    wanted: list[Wrt] = [(), *((name,) for name in names)]
    if order >= 2:
        wanted += [(a, b) for i, a in enumerate(names) for b in names[i:]]
    wanted += [(name,) * n for n in range(3, order + 1) for name in names]
    return wanted


def held_point(point: Mapping[str, float], dtype: torch.dtype) -> dict[str, float]:
    """The point as a tensor of ``dtype`` holds it (float32 rounds 1.2), so sympy sees the same."""
    return {name: torch.tensor(value, dtype=dtype).item() for name, value in point.items()}


def compute(
    expression: Expression,
    point: Mapping[str, float],
    order: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """f and its derivatives at ``point`` with autograd.

    Args:
        expression: the parsed function.
        point: a value for each variable to differentiate by, in the order of the results.
        order: 1 for the gradient; 2 adds the Hessian; n > 2 adds pure derivatives up to n.
        dtype: the tensors' dtype.
        device: where to compute.

    Returns:
        Metric name (``f``, ``df_dx``, ``d2f_dxdy``, ...) -> value, in
        :func:`derivatives_to_compute` order.
    """
    leaves = {
        name: torch.tensor(value, dtype=dtype, device=device, requires_grad=True)
        for name, value in point.items()
    }
    # With no variables, the expression takes its dtype and device from any tensor passed.
    like = {} if leaves else {"": torch.zeros((), dtype=dtype, device=device)}
    f = expression.evaluate({**leaves, **like})
    tensors = _autograd(f, leaves, order)
    # One transfer for all values: a single synchronisation on a GPU.
    values = torch.stack([tensor.detach() for tensor in tensors.values()]).tolist()
    return {metric_name(wrt): value for wrt, value in zip(tensors, values)}


def _autograd(
    f: torch.Tensor, leaves: dict[str, torch.Tensor], order: int
) -> dict[Wrt, torch.Tensor]:
    names = list(leaves)
    found: dict[Wrt, torch.Tensor] = {(): f}
    if not names:
        return found
    gradient = grad(f, list(leaves.values()), create_graph=order >= 2)
    found.update({(name,): value for name, value in zip(names, gradient)})
    if order >= 2:
        for i, a in enumerate(names):
            row = grad(found[(a,)], [leaves[b] for b in names[i:]], create_graph=order >= 3)
            found.update({(a, b): value for b, value in zip(names[i:], row)})
    for n in range(3, order + 1):
        for name in names:
            (found[(name,) * n],) = grad(
                found[(name,) * (n - 1)], [leaves[name]], create_graph=n < order
            )
    return found


def grad(
    output: torch.Tensor, inputs: list[torch.Tensor], create_graph: bool
) -> list[torch.Tensor]:
    """``torch.autograd.grad``, with 0 where ``output`` does not depend on an input."""
    if not output.requires_grad:  # e.g. the derivative of a linear term is a constant
        return [torch.zeros_like(leaf) for leaf in inputs]
    # retain_graph: the partials of one order share the graph the next order differentiates.
    grads = torch.autograd.grad(
        output, inputs, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, inputs)]
