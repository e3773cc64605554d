"""Composition and validation of every config group, and every bad setting's message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException

from experiments import config, optimizers, tasks
from experiments.errors import ConfigError
from experiments.tasks import registry
from tests.conftest import CONF_DIR, compose_config

OPTIMIZERS = sorted(p.stem for p in (Path(CONF_DIR) / "optim").glob("*.yaml"))
TASK_NAMES = sorted(p.stem for p in (Path(CONF_DIR) / "task").glob("*.yaml"))


def test_every_group_option_is_shipped_and_registered() -> None:
    assert OPTIMIZERS == ["adagrad", "adam", "adamw", "lbfgs", "rmsprop", "sgd"]
    # Each shipped YAML's task is registered, by this package (others may register more).
    assert set(TASK_NAMES) <= set(tasks.names())
    own = {name for name in tasks.names() if registry.distribution_of(name) == "experiments"}
    assert own == set(TASK_NAMES)


@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_every_optimizer_composes_validates_and_builds(optim: str) -> None:
    cfg = compose_config([f"optim={optim}", "optim.lr=0.05"])
    settings = config.validate(cfg)
    assert settings.optim.lr == 0.05
    param = torch.zeros(1, requires_grad=True)
    optimizer = optimizers.build(cfg.optim)([param])
    assert type(optimizer).__name__.lower() == optim
    assert optimizer.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_composes_and_validates(task: str) -> None:
    settings = config.validate(compose_config([f"task={task}"]))
    assert settings.task.name == task


def test_defaults_are_the_tutorials() -> None:
    settings = config.validate(compose_config())
    assert settings.task.expr == "3*x**2 + 6*x - 9"
    assert settings.task.init == {"x": 10.0}
    assert settings.task.steps == 20
    assert settings.optim.lr == 0.1
    assert settings.optim._target_ == "torch.optim.SGD"
    assert settings.device == "auto"


def test_new_variables_can_be_given_on_the_command_line() -> None:
    # Hydra's override grammar needs the quotes around a value with parentheses.
    expr = "(1 - x)**2 + 100*(y - x**2)**2"
    cfg = compose_config([f'task.expr="{expr}"', "task.init={x: -1, y: 2}"])
    assert cfg.task.expr == expr
    assert config.validate(cfg).task.init == {"x": -1.0, "y": 2.0}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optim.lr=abc"], r"optim\.lr"),
        (["optim.lrr=0.1"], r"optim\.lrr"),
        (["task.stepz=3"], r"task\.stepz"),
        (["task=nope"], r"task/nope"),
        (["optim=nope"], r"optim/nope"),
        (["task.steps=ten"], r"task\.steps"),
    ],
)
def test_composition_refuses_unknown_keys_and_wrong_types(overrides: list[str], match: str) -> None:
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException), match=match):
        compose_config(overrides)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optim.lr=-0.1"], r"optim\.lr must be a positive number, got -0\.1"),
        (["optim.lr=0"], r"optim\.lr must be a positive number, got 0"),
        (["task.steps=0"], r"task\.steps must be a positive integer, got 0"),
        (["task.steps=-3"], r"task\.steps must be a positive integer, got -3"),
        (["task.tol=-1"], r"task\.tol must be a positive number, got -1"),
        (["task.dtype=int8"], r"task\.dtype must be one of float32, float64, got 'int8'"),
        (["device=tpu"], r"device must be one of auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        (["device=cuda:x"], r"got 'cuda:x'"),
        (["seed=-1"], r"seed must be a non-negative integer, got -1"),
        (["tracking.log_every=0"], r"tracking\.log_every must be a positive integer, got 0"),
        (["tracking.recorder_wait_s=0"], r"tracking\.recorder_wait_s must be a positive number"),
        (["tracking.stop_wait_s=0"], r"tracking\.stop_wait_s must be a positive number"),
        (["optim=adam", "optim.betas=[0.9,1.5]"], r"optim\.betas\[1\] must be in \[0, 1\)"),
        (["optim=sgd", "optim.nesterov=true"], r"optim\.nesterov=true needs optim\.momentum"),
        (["task.expr=x*y"], r"task\.init has no value for y"),
        (["task.init.x=inf"], r"task\.init\.x must be finite"),
        (["task.init.x=abc"], r"task\.init\.x"),
    ],
)
def test_out_of_range_values_are_refused_with_key_and_value(
    overrides: list[str], match: str
) -> None:
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match=match) as caught:
        config.validate(cfg)
    assert "\n" not in str(caught.value)


def test_any_torch_optimizer_works_through_target() -> None:
    cfg = compose_config(["optim._target_=torch.optim.Adamax", "optim.lr=0.2", "optim.momentum=0"])
    with pytest.raises(ConfigError, match=r"optim\.momentum is not an argument of torch\.optim"):
        optimizers.build(cfg.optim)
    optimizer = optimizers.build({"_target_": "torch.optim.Adadelta", "lr": 0.5, "rho": 0.8})(
        [torch.zeros(1, requires_grad=True)]
    )
    assert isinstance(optimizer, torch.optim.Adadelta)
    assert optimizer.param_groups[0]["rho"] == 0.8


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("torch.nn.Linear", "is not a torch.optim.Optimizer class"),
        ("torch.optim.NoSuchThing", "cannot be imported"),
        ("os.system", "is not a torch.optim.Optimizer class"),
    ],
)
def test_optimizer_target_must_be_a_torch_optimizer(target: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        optimizers.build({"_target_": target, "lr": 0.1})


def test_flatten_gives_dotted_keys() -> None:
    from experiments.runner.identity import flatten

    flat = flatten({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "device": "cpu", "empty": {}})
    assert flat == {"optim.lr": 0.1, "optim.betas": [0.9, 0.99], "device": "cpu", "empty": {}}
