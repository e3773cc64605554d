"""The matmul task and its measurement code, on the CPU with small sizes and short budgets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from matplotlib.figure import Figure

from experiments import config, devices
from experiments.errors import ConfigError, RunFailure
from experiments.tasks.context import MemoryRecorder, TaskContext
from experiments.tasks.matmul import task as matmul
from experiments.tasks.matmul import timing
from tests.conftest import compose_config

QUICK = 0.05  # seconds of timing per point: plenty for correctness, keeps the file fast
needs_gpu = pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device")


def quick_config(**overrides) -> matmul.MatmulConfig:
    settings = {"m": 32, "k": 48, "n": 16, "warmup": 1, "min_run_time_s": QUICK}
    return matmul.MatmulConfig(**{**settings, **overrides})


def cpu_context(tmp_path: Path) -> TaskContext:
    return TaskContext(
        device=torch.device("cpu"),
        recorder=MemoryRecorder(),
        optim=None,
        seed=0,
        output_dir=tmp_path,
    )


# --- measurement ---


def test_gflops_is_two_m_k_n_over_time():
    assert timing.matmul_flops(2, 3, 4) == 48
    assert timing.gflops(2, 3, 4, 1e-9) == pytest.approx(48.0)
    result = timing.measure_matmul(64, 32, 16, min_run_time=QUICK, warmup=1)
    seconds = result.median_ms / 1e3
    assert result.gflops == pytest.approx(2 * 64 * 32 * 16 / seconds / 1e9)


def test_cpu_measurement_reports_every_field():
    result = timing.measure_matmul(64, 32, 16, min_run_time=QUICK, warmup=1)
    assert (result.m, result.k, result.n, result.dtype, result.device) == (
        64,
        32,
        16,
        "float32",
        "cpu",
    )
    assert result.shape == "(64x32)@(32x16)"
    assert result.median_ms > 0 and result.iqr_ms >= 0 and result.cold_ms > 0
    assert result.repeats >= result.blocks >= 1
    assert result.timing_s >= QUICK  # blocked_autorange fills the budget
    assert result.h2d_ms is None and result.peak_mem_mb is None  # GPU-only measurements
    assert result.rel_error < 1e-5


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_other_dtypes_pass_their_tolerance(dtype):
    result = timing.measure_matmul(32, 64, 32, dtype=dtype, min_run_time=QUICK, warmup=0)
    assert result.dtype == dtype
    assert result.rel_error <= timing.tolerance(dtype)


def test_relative_error_sees_a_wrong_product():
    a, b = torch.randn(8, 4), torch.randn(4, 8)
    assert timing.relative_error(a, b, a @ b) < 1e-6
    assert timing.relative_error(a, b, a @ b + 1.0) > 0.1


def test_a_wrong_product_fails_the_run_naming_dtype_and_error():
    timing.check_accuracy("float32", 1e-7)
    with pytest.raises(RunFailure, match=r"matmul in float32 is wrong: relative error 0\.5"):
        timing.check_accuracy("float32", 0.5)
    with pytest.raises(RunFailure, match="bfloat16 is wrong: relative error nan"):
        timing.check_accuracy("bfloat16", float("nan"))


def test_threads_are_honoured_and_restored():
    before = torch.get_num_threads()
    one = timing.measure_matmul(64, 64, 64, threads=1, min_run_time=QUICK, warmup=0)
    every = timing.measure_matmul(64, 64, 64, min_run_time=QUICK, warmup=0)
    assert one.threads == 1
    assert every.threads == timing.default_threads() >= 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [0, -2, True])
def test_bad_thread_count_is_refused(threads):
    with pytest.raises(ConfigError, match="task.threads must be a positive integer"):
        timing.measure_matmul(8, 8, 8, threads=threads, min_run_time=QUICK)


def test_unknown_dtype_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"task.dtype must be one of float32, .* got 'int8'"):
        timing.check_dtype_supported("int8", torch.device("cpu"))


def test_huge_size_is_refused_before_allocating():
    started = time.perf_counter()
    with pytest.raises(
        RunFailure, match=r"does not fit in memory on cpu: it needs \d+\.\d TiB, only"
    ):
        timing.measure_matmul(10**6, 10**6, 10**6, min_run_time=QUICK)
    assert time.perf_counter() - started < 1.0


def test_required_bytes_counts_operands_product_and_check():
    # float32 64x64 operands and product, then the float64 check of all 64 rows.
    timed = 3 * 64 * 64 * 4
    check = 3 * 64 * 64 * 8 + 64 * 64 * 4
    assert timing.required_bytes(64, 64, 64, "float32") == timed + check


def test_allocation_failure_message_says_what_and_how_much():
    with pytest.raises(RunFailure) as caught:
        with timing.out_of_memory_as_failure("(9x9)@(9x9) float32 on cpu", 3 * 2**30):
            torch.empty(2**61, dtype=torch.uint8)  # more than any address space holds
    message = str(caught.value)
    assert message.startswith("(9x9)@(9x9) float32 on cpu does not fit in memory")
    assert "needs about 3.0 GiB" in message and "\n" not in message


def test_other_runtime_errors_pass_through():
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        with timing.out_of_memory_as_failure("x", 1):
            torch.mm(torch.ones(2, 3), torch.ones(2, 3))


def test_operands_on_two_devices_get_an_explanation():
    # The tutorial's `cpu + gpu`, without a GPU: the meta device is another device too.
    cpu, elsewhere = torch.tensor([10]), torch.empty(1, device="meta")
    timing.check_same_device(cpu, torch.tensor([1]))
    with pytest.raises(ConfigError, match=r"different devices \(cpu, meta\).*x\.to\(device\)"):
        timing.check_same_device(cpu, elsewhere)


def test_format_bytes():
    assert timing.format_bytes(512) == "512 B"
    assert timing.format_bytes(3 * 2**30) == "3.0 GiB"


# --- the task ---


def test_run_records_metrics_tags_and_figure(tmp_path):
    ctx = cpu_context(tmp_path)
    result = matmul.run(quick_config(), ctx)
    recorder = ctx.recorder
    assert result == recorder.last("objective/time_ms")
    results = {"time_iqr_ms", "gflops", "cold_ms", "rel_error"}
    expected = {f"result/{name}" for name in results} | {"repeats", "timing_s"}
    assert "result/time_ms" not in recorder.metrics  # the objective, under objective/ only
    assert expected <= set(recorder.metrics)
    assert not {"result/h2d_ms", "result/peak_mem_mb"} & set(recorder.metrics)
    assert recorder.last("result/rel_error") < 1e-5
    assert recorder.tags["shape"] == "(32x48)@(48x16)"
    assert recorder.tags["dtype"] == "float32"
    assert recorder.tags["threads"] == timing.default_threads()
    assert recorder.tags["device.name"] == devices.describe(torch.device("cpu"))
    assert isinstance(recorder.figures["timing.png"], Figure)


def test_run_records_the_configured_thread_count(tmp_path):
    ctx = cpu_context(tmp_path)
    matmul.run(quick_config(threads=1), ctx)
    assert ctx.recorder.tags["threads"] == 1


def test_size_makes_a_square_product():
    assert quick_config(size=7).shape() == (7, 7, 7)
    assert matmul.MatmulConfig().shape() == (512, 1024, 512)  # the tutorial's product


def test_huge_size_fails_the_run_and_keeps_the_tags(tmp_path):
    ctx = cpu_context(tmp_path)
    with pytest.raises(RunFailure, match="does not fit in memory"):
        matmul.run(quick_config(size=10**6), ctx)
    assert ctx.recorder.tags["shape"] == "(1000000x1000000)@(1000000x1000000)"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": 0}, "task.size must be a positive integer, got 0"),
        ({"size": -3}, "task.size must be a positive integer, got -3"),
        ({"m": 0}, "task.m must be a positive integer, got 0"),
        ({"k": -1}, "task.k must be a positive integer, got -1"),
        ({"n": 2.5}, "task.n must be a positive integer, got 2.5"),
        ({"dtype": "int8"}, "task.dtype must be one of float32, float64, float16, bfloat16"),
        ({"threads": -1}, r"task.threads must be a positive integer or null \(all cores\), got -1"),
        ({"threads": 0}, "task.threads must be a positive integer or null"),
        ({"warmup": -1}, "task.warmup must be a non-negative integer, got -1"),
        ({"min_run_time_s": 0}, "task.min_run_time_s must be a positive number, got 0"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        quick_config(**overrides)


# --- the YAML, composed as the command line would ---


def compose_matmul(*overrides: str):
    return compose_config(["task=matmul", *overrides])


def test_yaml_defaults_are_the_tutorial_product():
    settings = config.validate(compose_matmul())
    assert isinstance(settings.task, matmul.MatmulConfig)
    assert settings.task.shape() == (512, 1024, 512)
    assert settings.task.dtype == "float32" and settings.task.threads is None


def test_yaml_overrides_reach_the_schema():
    settings = config.validate(compose_matmul("task.size=64", "task.dtype=bfloat16"))
    assert settings.task.shape() == (64, 64, 64) and settings.task.dtype == "bfloat16"


def test_yaml_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="task.size must be a positive integer, got 0"):
        config.validate(compose_matmul("task.size=0"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.sizee=1", "Could not override 'task.sizee'"),  # a typo in a key
        ("task.size=abc", "Error merging override task.size=abc"),  # the schema's types
        ("task.threads=2.5", "Error merging override task.threads=2.5"),
    ],
)
def test_yaml_typos_and_wrong_types_fail_at_composition(override, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose_matmul(override)


# --- devices ---


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="device=cuda is not available"):
        devices.resolve("cuda")


@pytest.mark.gpu
@needs_gpu
def test_gpu_measurement_adds_copy_and_memory():
    result = timing.measure_matmul(256, 256, 256, device="cuda", min_run_time=QUICK, warmup=1)
    assert result.device.startswith("cuda")
    assert result.h2d_ms is not None and result.h2d_ms > 0
    assert result.peak_mem_mb is not None and result.peak_mem_mb > 0
    assert result.rel_error < 1e-5


@pytest.mark.gpu
@needs_gpu
def test_gpu_bfloat16_runs_or_is_refused_clearly():
    try:
        result = timing.measure_matmul(
            256, 256, 256, dtype="bfloat16", device="cuda", min_run_time=QUICK
        )
    except ConfigError as error:
        assert "task.dtype=bfloat16" in str(error)
    else:
        assert result.rel_error <= timing.tolerance("bfloat16")


@pytest.mark.gpu
@needs_gpu
def test_gpu_operands_mixed_with_cpu_get_an_explanation():
    with pytest.raises(ConfigError, match=r"different devices \(cpu, cuda:0\)"):
        timing.check_same_device(torch.tensor([10]), torch.tensor([10]).cuda())
