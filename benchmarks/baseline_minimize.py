"""The hand-written baseline: the tutorial's optimisation loop, logged to MLflow by hand.

This is what a user writes without the pipeline: the tutorial's SGD loop on
3x^2 + 6x - 9, ``mlflow.log_metric`` for every value of every step, and the tutorial's
figure through ``mlflow.log_figure``. By default it records what the pipeline records per
step (loss, gradient norm and x); ``--only-loss`` records the loss alone, the least a
hand-written loop would log. ``bench_minimize.py`` times the pipeline against both.

Usage: python benchmarks/baseline_minimize.py [STEPS] [--only-loss]   (MLflow's default store)
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import torch  # noqa: E402
import torch.optim as optim  # noqa: E402


def f(x):
    return 3 * x**2 + 6 * x - 9


def main(steps: int, only_loss: bool) -> None:
    mlflow.set_experiment("baseline")
    with mlflow.start_run():
        mlflow.log_param("lr", 0.1)
        mlflow.log_param("steps", steps)
        a = torch.tensor(10.0, requires_grad=True)
        optimizer = optim.SGD([a], lr=0.1)
        for step in range(steps):
            optimizer.zero_grad()
            out = f(a)
            out.backward()
            mlflow.log_metric("loss", out.item(), step=step)
            if not only_loss:
                mlflow.log_metric("grad_norm", a.grad.abs().item(), step=step)
                mlflow.log_metric("x", a.item(), step=step)
            optimizer.step()
        print(a)
        tmp = torch.linspace(-5, 5, 100)
        figure = plt.figure(figsize=(15, 10), facecolor="azure")
        plt.plot(tmp, f(tmp), ms=10)
        plt.plot(a.detach().numpy(), f(a.detach().numpy()), marker="^", ms=20)
        plt.xticks(torch.arange(-5.0, 6.0, 1))
        plt.grid()
        mlflow.log_figure(figure, "function.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", type=int, nargs="?", default=20)
    parser.add_argument("--only-loss", action="store_true")
    args = parser.parse_args()
    main(args.steps, args.only_loss)
