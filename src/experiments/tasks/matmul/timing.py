"""Trustworthy timing of one matrix product, ``(m x k) @ (k x n)``, on one device.

The tutorial times ``torch.mm`` once with ``time.time()``. On a GPU that measures the kernel
launch, not the work, and the first call also pays for library start-up. Here the product is
timed with ``torch.utils.benchmark.Timer`` (which synchronises the accelerator around each
block of calls) on every CPU thread asked for, after a warm-up, with adaptive repeats; the
cold first call and the host-to-device copy are measured separately so users see what the
naive timing mixes in. The result is checked against a float64 product.

This module needs only torch (and the project's ``errors`` and ``devices`` modules), so a
bare machine with torch can run it: see ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from experiments.devices import synchronize
from experiments.errors import ConfigError, RunFailure, first_line

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Largest relative Frobenius error accepted against the float64 product. float32 rounding
# over k ~ 1e3..1e4 terms gives ~1e-6; half precision keeps 8 (bf16) or 11 (fp16) mantissa
# bits, so ~1e-3. Each bound leaves an order of magnitude of headroom.
TOLERANCES: dict[str, float] = {
    "float32": 1e-4,
    "float64": 1e-10,
    "float16": 1e-2,
    "bfloat16": 1e-2,
}
# float32 matmuls that may use TF32 (10 mantissa bits) are held to the half-precision bound.
REDUCED_FLOAT32_TOLERANCE = 1e-2

# Rows of the product compared with float64: enough for a stable error estimate, few enough
# that the float64 check stays cheap next to the timing even on the CPU at 8192 x 8192.
CHECK_ROWS = 256

# Copies timed for ``h2d_ms``; the median of three steadies the one-shot copy of the tutorial.
H2D_REPEATS = 3

# torch's own default thread count (physical cores, or OMP_NUM_THREADS), read before any
# caller changes it; torch.utils.benchmark.Timer would otherwise run on ONE thread.
_DEFAULT_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class MatmulTiming:
    """What :func:`measure_matmul` found.

    Attributes:
        m: rows of the left operand.
        k: shared dimension.
        n: columns of the right operand.
        dtype: the dtype's name, e.g. ``float32``.
        device: the device the product ran on, e.g. ``cuda:0``.
        threads: CPU threads torch used.
        median_ms: median time of one warm product, in milliseconds.
        iqr_ms: interquartile range of the per-block times, in milliseconds.
        gflops: ``2 m k n / median`` in GFLOP/s.
        cold_ms: the first product on fresh operands, synchronised, in milliseconds.
        h2d_ms: copying both operands from host memory with ``.to(device)``, in
            milliseconds; ``None`` on the CPU.
        rel_error: relative Frobenius error against the float64 product.
        peak_mem_mb: peak device memory allocated while timing, in MiB; ``None`` off CUDA.
        repeats: products measured by the timer (blocks times calls per block).
        blocks: timed blocks; the spread is taken over their per-call times.
        timing_s: wall seconds spent warming up and timing (the budget for this point).
    """

    m: int
    k: int
    n: int
    dtype: str
    device: str
    threads: int
    median_ms: float
    iqr_ms: float
    gflops: float
    cold_ms: float
    h2d_ms: float | None
    rel_error: float
    peak_mem_mb: float | None
    repeats: int
    blocks: int
    timing_s: float

    @property
    def relative_spread(self) -> float:
        """The interquartile range as a fraction of the median."""
        return self.iqr_ms / self.median_ms

    @property
    def shape(self) -> str:
        """The product in the tutorial's words, e.g. ``(512x1024)@(1024x512)``."""
        return f"({self.m}x{self.k})@({self.k}x{self.n})"


def default_threads() -> int:
    """All cores, as torch counts them when it starts (its default intra-op thread count)."""
    return _DEFAULT_THREADS


def matmul_flops(m: int, k: int, n: int) -> int:
    """Floating-point operations of one ``(m x k) @ (k x n)``: a multiply and an add per term."""
    return 2 * m * k * n


def gflops(m: int, k: int, n: int, seconds: float) -> float:
    """Throughput in GFLOP/s of one ``(m x k) @ (k x n)`` that took ``seconds``."""
    return matmul_flops(m, k, n) / seconds / 1e9


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype for a ``task.dtype`` name.

    Raises:
        ConfigError: the name is not one of :data:`DTYPES`.
    """
    if name not in DTYPES:
        raise ConfigError(f"task.dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def check_dtype_supported(name: str, device: torch.device) -> None:
    """Refuse a dtype this device cannot multiply in, before any large allocation.

    Args:
        name: a ``task.dtype`` name.
        device: where the product will run.

    Raises:
        ConfigError: the name is unknown, the GPU lacks native bfloat16, or (off CUDA) a
            tiny trial product in this dtype fails on this device.
    """
    dtype = dtype_of(name)
    if device.type == "cuda":
        # No trial product here: it would start cuBLAS before the cold call is timed.
        # float32/float64/float16 run on every CUDA GPU; bfloat16 natively from sm_80.
        if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
            raise ConfigError(
                f"task.dtype=bfloat16 is not supported natively on device {device} "
                f"({torch.cuda.get_device_name(device)}, before sm_80); use float16 or float32"
            )
        return
    try:
        probe = torch.ones(2, 2, dtype=dtype, device=device)
        torch.mm(probe, probe)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            f"task.dtype={name} cannot run matmul on device {device}: {first_line(error)}"
        ) from None


def check_same_device(*tensors: torch.Tensor) -> None:
    """Explain, instead of torch's raw error, why tensors on two devices cannot be combined.

    This is the tutorial's ``cpu + gpu`` mistake: a computation reads all its operands from
    one device's memory, so each must first be moved there with ``.to(device)``.

    Raises:
        ConfigError: the tensors do not all live on one device.
    """
    places = [str(tensor.device) for tensor in tensors]
    if len(set(places)) > 1:
        raise ConfigError(
            f"operands are on different devices ({', '.join(places)}): torch computes on one "
            "device at a time (the tutorial's `cpu + gpu` error); move every operand there "
            "first with x.to(device)"
        )


def required_bytes(m: int, k: int, n: int, name: str) -> int:
    """Device memory the measurement holds at once: operands, product and the float64 check."""
    itemsize = dtype_of(name).itemsize
    timed = (m * k + k * n + m * n) * itemsize
    rows = min(m, CHECK_ROWS)
    check = (rows * k + k * n + rows * n) * 8 + rows * n * itemsize
    return timed + check


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: the GPU's free memory, or the host's MemAvailable.

    Returns ``None`` where it cannot be read (e.g. MPS, or no ``/proc/meminfo``).
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    if device.type == "cpu":
        return _host_available_bytes()
    return None


def check_fits(m: int, k: int, n: int, name: str, device: torch.device) -> None:
    """Refuse, before allocating anything, a product that cannot fit in memory.

    The operands are also made in host memory for the copy timed on a GPU, so the host is
    checked too.

    Raises:
        RunFailure: the measurement needs more memory than is free; says how much.
    """
    need = required_bytes(m, k, n, name)
    places = [(device, need)]
    if device.type != "cpu":
        places.append((torch.device("cpu"), (m * k + k * n) * dtype_of(name).itemsize))
    for place, bytes_needed in places:
        free = available_bytes(place)
        if free is not None and bytes_needed > free:
            raise RunFailure(
                f"({m}x{k})@({k}x{n}) {name} does not fit in memory on {place}: it needs "
                f"{format_bytes(bytes_needed)}, only {format_bytes(free)} is free"
            )


@contextmanager
def out_of_memory_as_failure(what: str, need: int) -> Iterator[None]:
    """Turn an allocation failure inside the block into a one-line :class:`RunFailure`.

    Args:
        what: the work being done, for the message, e.g. ``(8192x8192)@(8192x8192) float32``.
        need: bytes the work was expected to need, for the message.

    Raises:
        RunFailure: CUDA ran out of memory, or a host allocation failed.
    """
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        reason = first_line(error)
    else:
        return
    # Outside the except clause the traceback, and the tensors its frames hold, are gone,
    # so the cached blocks can really be handed back for the next job of a sweep.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    raise RunFailure(
        f"{what} does not fit in memory: it needs about {format_bytes(need)} ({reason})"
    )


def relative_error(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> float:
    """Relative Frobenius error of ``c`` against ``a @ b`` computed in float64.

    Up to :data:`CHECK_ROWS` evenly spaced rows are compared, so the check stays cheap at
    any size. The reference runs on the operands' device where it supports float64, else
    on the CPU.
    """
    rows = torch.linspace(0, a.shape[0] - 1, min(a.shape[0], CHECK_ROWS)).long()
    where = a.device if a.device.type in ("cpu", "cuda") else torch.device("cpu")
    left = a[rows.to(a.device)].to(where, torch.float64)
    right = b.to(where, torch.float64)
    reference = torch.mm(left, right)
    product = c[rows.to(c.device)].to(where, torch.float64)
    check_same_device(product, reference)  # the subtraction below needs one device
    return float(torch.linalg.norm(product - reference) / torch.linalg.norm(reference))


def tolerance(name: str) -> float:
    """The largest relative error accepted for dtype ``name`` under torch's current settings."""
    if name == "float32" and _float32_may_use_tf32():
        return REDUCED_FLOAT32_TOLERANCE
    return TOLERANCES[name]


def check_accuracy(name: str, error: float) -> None:
    """Raise :class:`RunFailure` if ``error`` exceeds :func:`tolerance` for dtype ``name``."""
    limit = tolerance(name)
    if not error <= limit:  # also catches NaN
        raise RunFailure(
            f"matmul in {name} is wrong: relative error {error:.3g} against float64 "
            f"exceeds {limit:g}"
        )


def measure_matmul(
    m: int,
    k: int,
    n: int,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    min_run_time: float = 1.0,
    seed: int = 0,
) -> MatmulTiming:
    """Time ``(m x k) @ (k x n)`` on ``device`` the way a performance engineer would.

    Steps: refuse what cannot run or fit; time the host-to-device copy (GPU only); time the
    first product on fresh operands made on the device; warm up; time warm products with
    ``Timer.blocked_autorange`` on ``threads`` CPU threads; check against float64.

    Args:
        m: rows of the left operand.
        k: shared dimension.
        n: columns of the right operand.
        dtype: one of :data:`DTYPES`, by name.
        device: where to run.
        threads: CPU threads for torch; ``None`` for all cores (:func:`default_threads`).
        warmup: warm products before timing; stops early once warm-up has taken
            ``min_run_time``, so huge sizes do not spend minutes warming up.
        min_run_time: seconds of timing the adaptive repeats aim for.
        seed: seed of the random operands.

    Returns:
        The timing, throughput, cold-call and copy times, error and memory.

    Raises:
        ConfigError: unknown or unsupported dtype, or a bad thread count.
        RunFailure: the size does not fit in memory, or the product is wrong.
    """
    device = torch.device(device)
    threads = default_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"task.threads must be a positive integer, got {threads!r}")
    check_dtype_supported(dtype, device)
    check_fits(m, k, n, dtype, device)
    what = f"({m}x{k})@({k}x{n}) {dtype} on {device}"
    with _torch_threads(threads), out_of_memory_as_failure(what, required_bytes(m, k, n, dtype)):
        return _measure(m, k, n, dtype, device, threads, warmup, min_run_time, seed)


def format_bytes(count: float) -> str:
    """``count`` bytes in the largest binary unit that keeps it at least 1, e.g. ``3.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


def _measure(
    m: int,
    k: int,
    n: int,
    name: str,
    device: torch.device,
    threads: int,
    warmup: int,
    min_run_time: float,
    seed: int,
) -> MatmulTiming:
    dtype = DTYPES[name]
    h2d_ms = None if device.type == "cpu" else _time_h2d(m, k, n, dtype, device, seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak of the timed product only
    a, b = _operands(m, k, n, dtype, device, seed)
    check_same_device(a, b)
    c = torch.empty(m, n, dtype=dtype, device=device)
    cold_ms = _time_once(lambda: torch.mm(a, b, out=c), device) * 1e3
    started = time.perf_counter()
    _warm_up(lambda: torch.mm(a, b, out=c), device, warmup, budget=min_run_time)
    from torch.utils.benchmark import Timer  # 0.2 s of imports: loaded by matmul runs only

    timer = Timer(
        stmt="torch.mm(a, b, out=c)",
        globals={"torch": torch, "a": a, "b": b, "c": c},
        num_threads=threads,
    )
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    timing_s = time.perf_counter() - started
    peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    error = relative_error(a, b, c)
    check_accuracy(name, error)
    return MatmulTiming(
        m=m,
        k=k,
        n=n,
        dtype=name,
        device=str(device),
        threads=threads,
        median_ms=measurement.median * 1e3,
        iqr_ms=measurement.iqr * 1e3,
        gflops=gflops(m, k, n, measurement.median),
        cold_ms=cold_ms,
        h2d_ms=h2d_ms,
        rel_error=error,
        peak_mem_mb=peak_mem_mb,
        repeats=len(measurement.times) * measurement.number_per_run,
        blocks=len(measurement.times),
        timing_s=timing_s,
    )


def _operands(
    m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal operands made directly in ``device`` memory, as the issue asks."""
    generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(m, k, dtype=dtype, device=device, generator=generator)
    b = torch.randn(k, n, dtype=dtype, device=device, generator=generator)
    return a, b


def _time_h2d(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, seed: int) -> float:
    """Median milliseconds to copy both operands host -> device, as the tutorial's ``.cuda()``."""
    a, b = _operands(m, k, n, dtype, torch.device("cpu"), seed)
    seconds = [_time_once(lambda: (a.to(device), b.to(device)), device) for _ in range(H2D_REPEATS)]
    return statistics.median(seconds) * 1e3


def _time_once(call: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, with the device drained before and after (launches are async)."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def _warm_up(call: Callable[[], object], device: torch.device, count: int, budget: float) -> None:
    """Run ``call`` up to ``count`` times, stopping once ``budget`` seconds have gone."""
    start = time.perf_counter()
    for _ in range(count):
        call()
        synchronize(device)
        if time.perf_counter() - start > budget:
            break


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _float32_may_use_tf32() -> bool:
    if torch.get_float32_matmul_precision() != "highest":
        return True
    return torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32


def _host_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts in KiB
    except (OSError, ValueError, IndexError):
        pass
    return None
