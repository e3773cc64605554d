"""The hand-written baseline: the tutorial's optimisation loop, logged to MLflow by hand.

This is what a user writes without the pipeline: the tutorial's SGD loop on
3x^2 + 6x - 9, ``mlflow.log_metric`` for every step, and the tutorial's figure through
``mlflow.log_figure``. ``bench_minimize.py`` times the pipeline against it.

Usage: python benchmarks/baseline_minimize.py [STEPS]   (default 20; MLflow's default store)
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import torch  # noqa: E402
import torch.optim as optim  # noqa: E402


def f(x):
    return 3 * x**2 + 6 * x - 9


def main(steps: int) -> None:
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
            optimizer.step()
            mlflow.log_metric("loss", out.item(), step=step)
        print(a)
        tmp = torch.linspace(-5, 5, 100)
        figure = plt.figure(figsize=(15, 10), facecolor="azure")
        plt.plot(tmp, f(tmp), ms=10)
        plt.plot(a.detach().numpy(), f(a.detach().numpy()), marker="^", ms=20)
        plt.xticks(torch.arange(-5.0, 6.0, 1))
        plt.grid()
        mlflow.log_figure(figure, "function.png")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
