"""Where a run ran: what decides its result besides its config.

:func:`collect` gathers it into one mapping (the run's ``environment.json`` artifact):
Python and the packages a run uses, torch's build (its BLAS, threading backend and thread
count, CUDA/cuDNN or HIP), the BLAS and OpenMP libraries loaded in the process (through
``threadpoolctl``), the CPU (model, the cores this process may use, the instruction-set flags
that decide a matmul's speed), the GPU where the run uses one, the settings that change
results or speed (environment variables, float32 matmul precision, TF32, deterministic
algorithms), and the code (commit, branch, a dirty tree's diff) with the command line; and
the task: its name, the package that registers it and its version, and, where that package
is an editable checkout (``pip install -e``) or a module of one's own in a git checkout, that
checkout's commit, branch and diff beside this package's.

:func:`tags` picks the few fields people filter on (``blas``, ``threads``, ``cpu.isa``,
``code.dirty``). Nothing here imports MLflow; what is slow to find (git) is found once per
process, while the store opens (:func:`prepare`), off the task's path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

import experiments
from experiments.record import uris

if TYPE_CHECKING:
    from experiments.api import Task

PACKAGES = (
    "torch",
    "hydra-core",
    "omegaconf",
    "mlflow",
    "numpy",
    "sympy",
    "matplotlib",
    "optuna",
    "threadpoolctl",
)
# Environment variables that change a result or its speed: thread pools, devices, kernels.
SETTINGS_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOTO", "BLIS_", "PYTORCH_", "CUBLAS_")
SETTINGS_NAMES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING")
# The instruction-set flags (Linux /proc/cpuinfo names) that decide which kernels run.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)
MAX_DIFF_BYTES = 1_000_000  # code.diff keeps at most this much of a dirty tree's diff
GIT_TIMEOUT_S = 5.0


def collect(
    device: Optional[torch.device], task: Optional[Task] = None, root: Optional[Path] = None
) -> dict[str, Any]:
    """Everything :mod:`this module <experiments.runner.environment>` records about a run.

    Args:
        device: the device the run uses (its GPU is described when it is one); None when
            it could not be had here.
        task: the task the run executes (None: a sweep's parent, which runs none).
        root: the checkout whose code state is recorded; by default the one this package
            runs from (none when it is installed elsewhere).
    """
    found = {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
        },
        "packages": dict(package_versions()),
        "torch": torch_build(),
        "threadpools": threadpools(),
        "cpu": cpu(),
        "gpu": gpu(device),
        "settings": settings(),
        "code": dict(code_state(root if root is not None else checkout())),
        "command": [uris.scrub(item) for item in [sys.executable, *sys.argv]],
        "cwd": os.getcwd(),
    }
    if task is not None:
        found["task"] = task_origin(task)
    return found


def tags(environment: dict[str, Any]) -> dict[str, str]:
    """The fields people filter on in the UI, as tags; the code's as MLflow names them."""
    found = {
        "blas": environment["torch"].get("blas") or "unknown",
        "threads": str(environment["torch"]["threads"]),
        "cpu.isa": ",".join(environment["cpu"].get("isa") or []) or "unknown",
    }
    code = environment["code"]
    if code.get("commit"):
        found["code.dirty"] = "true" if code["dirty"] else "false"
        found["mlflow.source.git.commit"] = code["commit"]
        if code.get("branch"):
            found["mlflow.source.git.branch"] = code["branch"]
    return found


def prepare(task: Optional[Task] = None) -> None:
    """Find now what is slow to find (git's answers, the packages' versions: some 50 ms),
    once a process: the runner calls this while the store opens, off the task's path."""
    code_state(checkout())
    package_versions()
    if task is not None:
        task_origin(task)


def task_origin(task: Task) -> dict[str, Any]:
    """The task and where its code comes from: the package that registers it, its version,
    and the code state of its own checkout where it has one apart from this package's."""
    from experiments.tasks import registry

    package = registry.distribution_of(task.name)
    found: dict[str, Any] = {"name": task.name, "package": package, "version": None}
    if package is not None:
        try:
            found["version"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    root = _task_checkout(task, package)
    if root is not None:
        found["checkout"] = str(root)
        if root != checkout():  # this package's own is recorded as "code" already
            found["code"] = dict(code_state(root))
    return found


@lru_cache(maxsize=8)
def _checkout_of(directory: Path) -> Optional[Path]:
    top = _git(directory, "rev-parse", "--show-toplevel")
    return Path(top).resolve() if top else None


def _task_checkout(task: Task, package: Optional[str]) -> Optional[Path]:
    """The git checkout a task's code is edited in: its package's, where it is installed
    editable (``pip install -e``, PEP 610's ``direct_url.json``), or, for a module of one's
    own (``EXPERIMENTS_TASKS``), the one its file is in. None for an installed package."""
    if package is not None:
        try:
            text = importlib.metadata.distribution(package).read_text("direct_url.json")
        except importlib.metadata.PackageNotFoundError:
            return None
        import json

        try:
            record = json.loads(text or "{}")
        except ValueError:
            return None
        if not record.get("dir_info", {}).get("editable"):
            return None
        url = str(record.get("url", ""))
        if not url.startswith("file://"):
            return None
        return _checkout_of(Path(url[len("file://") :]))
    module = sys.modules.get(task.settings.__module__)
    where = getattr(module, "__file__", None)
    return _checkout_of(Path(where).resolve().parent) if where else None


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """The versions of the packages a run uses, those installed."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["experiments"] = experiments.__version__
    return versions


def torch_build() -> dict[str, Any]:
    """torch's version and build: BLAS, threading backend, threads, CUDA/cuDNN or HIP."""
    shown = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    lapack = re.search(r"LAPACK_INFO=(\w+)", shown)
    backend = re.search(r"ATen parallel backend: (.+)", torch.__config__.parallel_info())
    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    return {
        "version": torch.__version__,
        "git_version": getattr(torch.version, "git_version", None),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "hip": getattr(torch.version, "hip", None),
        "blas": blas.group(1) if blas else None,
        "lapack": lapack.group(1) if lapack else None,
        "parallel_backend": backend.group(1).strip() if backend else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def threadpools() -> list[dict[str, Any]]:
    """The BLAS and OpenMP libraries loaded in this process, as ``threadpoolctl`` sees them."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "prefix", "version", "threading_layer", "num_threads")
    pools = [
        {**{key: pool.get(key) for key in keys}, "library": Path(pool["filepath"]).name}
        for pool in threadpool_info()
    ]
    return sorted(pools, key=lambda pool: (str(pool["user_api"]), str(pool["library"])))


def cpu() -> dict[str, Any]:
    """The CPU's model, the cores this process may use, and its instruction-set flags."""
    info: dict[str, Any] = {
        "model": platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "isa": [],
    }
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return info
    model = re.search(r"^(?:model name|Model)\s*:\s*(.+)$", text, re.MULTILINE)
    if model:
        info["model"] = model.group(1).strip()
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    if flags:
        present = set(flags.group(1).split())
        info["isa"] = [flag for flag in ISA_FLAGS if flag in present]
    return info


def gpu(device: Optional[torch.device]) -> Optional[dict[str, Any]]:
    """The GPU a run uses: name, compute capability, memory, driver; None on the CPU."""
    if device is None:
        return None
    if device.type == "mps":
        return {"name": "Apple MPS"}
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": properties.name,
        "capability": f"{properties.major}.{properties.minor}",
        "memory_bytes": properties.total_memory,
        "multiprocessors": properties.multi_processor_count,
        "driver": _nvidia_driver(),
    }


def _nvidia_driver() -> Optional[str]:
    """The NVIDIA driver's version: NVML where installed, else the kernel module's file."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - NVML absent or not answering: try the next source
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(\S+)", text)
    return found.group(1) if found else None


def settings() -> dict[str, Any]:
    """The settings that change results or speed: variables and torch's switches."""
    variables = {
        name: value
        for name, value in sorted(os.environ.items())
        if name.startswith(SETTINGS_PREFIXES) or name in SETTINGS_NAMES
    }
    return {
        "variables": variables,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }


def checkout() -> Optional[Path]:
    """The git checkout this package runs from, or None when it is installed elsewhere."""
    root = Path(experiments.__file__).resolve().parents[2]
    return root if (root / ".git").exists() else None


@lru_cache(maxsize=8)
def code_state(root: Optional[Path]) -> dict[str, Any]:
    """Commit, branch and dirtiness of ``root``, with a dirty tree's diff (bounded).

    Found once per process: every run of a sweep shares its code. ``diff`` is ``git diff
    HEAD`` (staged and unstaged changes to tracked files) followed by the names of untracked
    files; at most :data:`MAX_DIFF_BYTES` of it are kept (``diff_truncated`` says so).
    """
    if root is None:
        return {"commit": None}
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=normal") or ""
    state: dict[str, Any] = {
        "commit": commit,
        "branch": None if branch == "HEAD" else branch,
        "dirty": bool(status.strip()),
        "diff": "",
        "diff_bytes": 0,
        "diff_sha256": None,
        "diff_truncated": False,
    }
    if state["dirty"]:
        diff = _git(root, "diff", "HEAD", strip=False) or ""
        untracked = [line[3:] for line in status.splitlines() if line.startswith("?? ")]
        if untracked:
            diff += "".join(f"# untracked: {name}\n" for name in untracked)
        data = diff.encode("utf-8", errors="replace")
        state["diff_bytes"] = len(data)
        state["diff_sha256"] = hashlib.sha256(data).hexdigest()  # what a comparison compares
        if len(data) > MAX_DIFF_BYTES:
            kept = data[:MAX_DIFF_BYTES].decode("utf-8", errors="ignore")
            diff = kept + (
                f"\n# code.diff truncated: {len(data):,} bytes, the first {MAX_DIFF_BYTES:,} kept\n"
            )
            state["diff_truncated"] = True
        state["diff"] = diff
    return state


def _git(root: Path, *arguments: str, strip: bool = True) -> Optional[str]:
    try:
        result = subprocess.run(
            ["git", "-C", str(root), *arguments],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if strip else result.stdout
