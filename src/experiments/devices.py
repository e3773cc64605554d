"""Turning the ``device`` setting into a ``torch.device`` and describing it."""

from __future__ import annotations

import platform
import re
from functools import lru_cache

import torch

from experiments.errors import ConfigError

_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_spec(spec: str) -> None:
    """Raise :class:`ConfigError` unless ``spec`` is a device name this tool understands."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:N or mps, got {spec!r}")


def gpus_for(spec: str) -> int:
    """How many GPUs a job on ``device=spec`` asks a cluster for (the Slurm preset's).

    ``cpu`` and ``mps`` need none; ``auto`` and ``cuda`` one; ``cuda:N`` N + 1, since the
    job sees only the GPUs it was given, numbered from 0.
    """
    check_spec(spec)
    if spec in ("cpu", "mps"):
        return 0
    return int(spec.split(":")[1]) + 1 if ":" in spec else 1


def available() -> list[str]:
    """The devices this machine can run on, e.g. ``['cpu', 'cuda:0']``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def resolve(spec: str) -> torch.device:
    """The ``torch.device`` for a ``device`` setting, checked against this machine.

    ``auto`` picks CUDA, then MPS, then the CPU, as
    ``torch.device("cuda" if torch.cuda.is_available() else "cpu")`` would.

    Args:
        spec: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The device to run on.

    Raises:
        ConfigError: the name is unknown, or the device is not present here.
    """
    check_spec(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError(f"device=mps is not available here; available: {_listing()}")
        return torch.device("mps")
    return _resolve_cuda(spec)


def _resolve_cuda(spec: str) -> torch.device:
    if not torch.cuda.is_available():
        reason = (
            "this torch build has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA device is visible"
        )
        raise ConfigError(f"device={spec} is not available: {reason}; available: {_listing()}")
    index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"device={spec} is not available: this machine has {count} CUDA device(s); "
            f"available: {_listing()}"
        )
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """A human name for the device: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_model()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` to finish (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _listing() -> str:
    return ", ".join(available())
