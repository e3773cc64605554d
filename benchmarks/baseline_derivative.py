"""The hand-written baseline: the tutorial's three 自動微分 snippets, logged to MLflow by hand.

This is what a user writes without the pipeline: each snippet as the tutorial has it, one
MLflow run per snippet, ``mlflow.log_metric`` for every value. ``bench_derivative.py``
times the pipeline's commands for the same three examples against it.

Usage: python benchmarks/baseline_derivative.py [1 2 3]   (default all; MLflow's default store)
"""

import sys

import mlflow
import torch


def first_derivative() -> None:
    x = torch.tensor(5.0, requires_grad=True)
    y = x**2  # <- y = x^2
    y.backward()
    print("dy/dx = ", x.grad.numpy())
    mlflow.log_metric("f", y.item())
    mlflow.log_metric("df_dx", x.grad.item())


def second_derivative() -> None:
    x = torch.tensor(5.0, requires_grad=True)
    y = x**2  # <- y = x^2
    z = torch.autograd.grad(y, x, create_graph=True)  # <- z = 2x
    print("dy/dx = ", z[0].detach().numpy())
    z[0].backward()
    print("dz/dx = ", x.grad.numpy())  # <- dz/dx = 2
    mlflow.log_metric("f", y.item())
    mlflow.log_metric("df_dx", z[0].item())
    mlflow.log_metric("d2f_dx2", x.grad.item())


def partial_derivatives() -> None:
    x = torch.tensor(1.0, requires_grad=True)
    y = torch.tensor(1.0, requires_grad=True)
    z = x**2 * y + 3 * x * y**5 + x**3
    z.backward()
    print(f"dz/dx = {x.grad}")
    print(f"dz/dy = {y.grad}")
    mlflow.log_metric("f", z.item())
    mlflow.log_metric("df_dx", x.grad.item())
    mlflow.log_metric("df_dy", y.grad.item())


SNIPPETS = {"1": first_derivative, "2": second_derivative, "3": partial_derivatives}


def main(which: list[str]) -> None:
    mlflow.set_experiment("baseline")
    for key in which:
        with mlflow.start_run(run_name=f"snippet {key}"):
            mlflow.log_param("snippet", SNIPPETS[key].__name__)
            SNIPPETS[key]()


if __name__ == "__main__":
    main(sys.argv[1:] or list(SNIPPETS))
