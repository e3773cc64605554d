"""A search's space: ``hydra.sweeper.params`` and the command line's sweeps, as Optuna's.

The syntax is Hydra's sweep syntax, as users already write it::

    optim.lr: tag(log, interval(1e-4, 1.0))   # a float, log-uniform
    task.steps: range(100, 1000, 100)          # an int from 100 to 900, step 100 (stop excluded)
    optim: choice(adam, sgd)                   # categorical
    task.dtype: float64                        # fixed: every trial gets it

A key the command line gives too takes the command line's value. Anything that does not
parse, or that Optuna cannot sample, is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.errors import HydraException

from experiments.errors import ConfigError


@dataclass
class Space:
    """What each trial samples (Optuna distributions) and what every trial gets as is."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: its sampled values, then the fixed ones."""
        sampled = [f"{key}={_override_value(value)}" for key, value in params.items()]
        return sampled + [f"{key}={value}" for key, value in self.fixed.items()]

    def grid(self) -> dict[str, list[Any]]:
        """Every value of each key, for the grid sampler: only discrete spaces have them."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        values: dict[str, list[Any]] = {}
        for key, distribution in self.distributions.items():
            if isinstance(distribution, CategoricalDistribution):
                values[key] = list(distribution.choices)
            elif distribution.step is None or (
                isinstance(distribution, FloatDistribution) and distribution.log
            ):
                raise ConfigError(
                    f"hydra.sweeper.params.{key}: sampler.name=grid needs choice(...) or "
                    "range(...), not an interval"
                )
            else:
                count = round((distribution.high - distribution.low) / distribution.step) + 1
                values[key] = [distribution.low + i * distribution.step for i in range(count)]
        return values


def parse(params: Optional[Mapping[str, Any]], arguments: Sequence[str]) -> Space:
    """The search space of ``hydra.sweeper.params`` with the command line's ``arguments``."""
    items = [
        (f"hydra.sweeper.params.{key}", f"{key}={value}") for key, value in (params or {}).items()
    ]
    items += [(item, item) for item in arguments]
    parser = OverridesParser.create()
    space = Space()
    for where, item in items:
        try:
            override = parser.parse_override(item)
        except HydraException as error:
            raise ConfigError(f"{where}: not a value or a sweep Hydra can parse: {error}") from None
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = _distribution(override, where)
        else:
            space.fixed[key] = override.get_value_element_as_str()
    if not space.distributions:
        raise ConfigError(
            "hydra.sweeper.params: nothing to search: give a key a choice(...), range(...) or "
            "interval(...)"
        )
    return space


def _distribution(override: Override, where: str) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices or not all(isinstance(c, (str, int, float, bool)) for c in choices):
            raise ConfigError(f"{where}: a choice needs plain values (text, numbers, true/false)")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        count = math.ceil((stop - start) / step) if step else 0
        if count <= 0:
            raise ConfigError(f"{where}: range({start}, {stop}, {step}) holds no value")
        last = start + (count - 1) * step
        if all(isinstance(x, int) for x in (start, stop, step)):
            return IntDistribution(int(start), int(last), step=int(step))
        return FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        log = "log" in value.tags
        if not low < high:
            raise ConfigError(f"{where}: interval({low}, {high}) is empty")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log interval needs a start above 0, not {low}")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ConfigError(f"{where}: Optuna cannot sample this sweep")


def _override_value(value: Any) -> str:
    """A sampled value as the command line writes it (floats in full, true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
