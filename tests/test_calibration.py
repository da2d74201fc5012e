"""Calibration and the standard compute unit: real measurements on this machine, checked
against a measurement of the test's own, and the wire models that carry them.

The machine running the tests is shared (other suites run beside this one), so every
timing here is a best-of-N: contention only ever slows a run down, so the fastest run
of several is the one closest to what the hardware does.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from threadpoolctl import threadpool_info, threadpool_limits

from computenet.agent.calibrate import calibrate
from computenet.model.metrics import Calibration, Metric, MetricLevel, MetricSource
from computenet.model.units import (
    REFERENCE_MEMORY_GBPS,
    SCU_VERSION,
    l1_compute,
    l1_memory,
    scu_from_fp32_tflops,
)

THREADS = min(2, len(os.sched_getaffinity(0)))


@pytest.fixture(scope="module")
def measured() -> Iterator[tuple[Calibration, float, float]]:
    """One calibration shared by the tests that only read it: each costs ~2 s of both cores."""
    before = time.time()
    cal = calibrate(THREADS)
    yield cal, before, time.time()


def _value(cal: Calibration, name: str, precision: str | None = None) -> float:
    m = cal.find(name, device="cpu0", precision=precision)
    assert m is not None, f"no {name} {precision or ''} metric in {cal.metrics}"
    return m.value


# --- (a) a real measurement -------------------------------------------------------------------


def test_calibration_measures_this_machine(measured: tuple[Calibration, float, float]) -> None:
    cal, before, after = measured
    fp32, fp64 = _value(cal, "matmul", "fp32"), _value(cal, "matmul", "fp64")
    triad = _value(cal, "triad")
    assert cal.scu > 0 and fp32 > 0 and fp64 > 0 and triad > 0
    assert cal.scu_version == SCU_VERSION
    assert cal.devices == ["cpu0"]  # no GPU on the test machines
    assert cal.cpus == THREADS
    assert {m.level for m in cal.metrics} == {MetricLevel.L0, MetricLevel.L1, MetricLevel.L2}
    assert all(m.source is MetricSource.measured for m in cal.metrics)
    assert all(before <= m.at <= after for m in cal.metrics)
    assert before <= cal.at <= after
    # Bounded: 2 s of budget; a phase may overrun only to reach three timed runs.
    assert 0 < cal.took_seconds < 8
    for m in cal.metrics:
        if m.level is MetricLevel.L0:
            assert m.size and m.repeats and m.repeats >= 3
    # Plausibility, loose enough for any CPU from a Raspberry Pi to a 2-core slice of a server:
    # a flop count or a unit off by 10^3 fails it, a slow neighbour does not.
    assert 1e-4 < fp32 < 100 and 1e-4 < fp64 < 100
    assert 0.1 < triad < 2000


def test_calibration_leaves_blas_threads_as_they_were() -> None:
    """The agent keeps using numpy after calibrating; a leaked limit would slow its jobs."""
    before = [p["num_threads"] for p in threadpool_info()]
    calibrate(1, seconds=0.3)
    assert [p["num_threads"] for p in threadpool_info()] == before


def test_calibration_rejects_nonsense_arguments() -> None:
    with pytest.raises(ValueError):
        calibrate(0)
    with pytest.raises(ValueError):
        calibrate(1, seconds=0)
    with pytest.raises(ValueError):
        calibrate(1, seconds=math.nan)


# --- (b) agreement with an independent measurement --------------------------------------------


def _independent_fp32_tflops(threads: int, n: int = 1024, seconds: float = 0.5) -> float:
    """The test's own timing: another order, other data, a plain best-of loop.

    Short products (about 12 ms on two cores) over half a second: on a contended machine a
    short run is far likelier than a long one to fall in a window where both cores are
    free, which is what a best-of needs; the calibration shrinks its order for the same
    reason when it finds the machine slow.
    """
    rng = np.random.default_rng(12345)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=c)  # warm-up: page faults on c, BLAS threads started
        best, repeats, end = math.inf, 0, time.perf_counter() + seconds
        while repeats < 8 or time.perf_counter() < end:
            t = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t)
            repeats += 1
    return 2.0 * n**3 / best / 1e12


def test_fp32_figure_agrees_with_an_independent_measurement() -> None:
    """Acceptance: the calibration's FP32 TFLOPS is within 20% of the test's own.

    Why this can pass on a busy 2-core machine and still fail for real errors: the two
    measurements are interleaved (independent, calibrate, independent) so that a neighbour
    burst hits both alike, and each side keeps its best over the rounds, a best-of-N that
    only converges to the true peak as rounds are added. Retrying (at most six rounds, only
    while they disagree) therefore cannot hide a systematic error: a wrong flop count (2x),
    thread limits not applied (2x on two cores) or timing that includes set-up stays as far
    off in every round. Only the noise shrinks.
    """
    best_ind = best_cal = 0.0
    ratio = math.nan
    for attempt in range(6):
        if attempt:
            time.sleep(0.5)  # let a neighbour's burst pass rather than measure through it
        best_ind = max(best_ind, _independent_fp32_tflops(THREADS))
        cal = calibrate(THREADS)
        best_cal = max(best_cal, _value(cal, "matmul", "fp32"))
        best_ind = max(best_ind, _independent_fp32_tflops(THREADS))
        ratio = best_cal / best_ind
        if abs(ratio - 1) <= 0.20:
            break
    assert abs(ratio - 1) <= 0.20, (
        f"calibration {best_cal:.4f} TFLOPS vs independent {best_ind:.4f} TFLOPS "
        f"(ratio {ratio:.2f}) with {THREADS} threads"
    )


# --- (c) the SCU is the FP32 figure, through the one definition ------------------------------


def test_scu_follows_the_definition(measured: tuple[Calibration, float, float]) -> None:
    cal, _, _ = measured
    fp32 = _value(cal, "matmul", "fp32")
    assert cal.scu == pytest.approx(scu_from_fp32_tflops(fp32), rel=1e-12)
    assert _value(cal, "scu") == pytest.approx(cal.scu, rel=1e-12)
    assert _value(cal, "compute") == pytest.approx(l1_compute(fp32), rel=1e-12)
    assert _value(cal, "memory") == pytest.approx(l1_memory(_value(cal, "triad")), rel=1e-12)
    units = {(m.level, m.name): m.unit for m in cal.metrics}
    assert units[(MetricLevel.L0, "matmul")] == "TFLOPS"
    assert units[(MetricLevel.L0, "triad")] == "GB/s"
    assert units[(MetricLevel.L1, "compute")] == units[(MetricLevel.L1, "memory")] == "1"
    assert units[(MetricLevel.L2, "scu")] == "SCU"


def test_unit_definition() -> None:
    assert SCU_VERSION == 1
    assert scu_from_fp32_tflops(2.5) == 2.5
    assert scu_from_fp32_tflops(0) == 0
    assert pytest.approx(50.0) == REFERENCE_MEMORY_GBPS
    assert l1_memory(25.0) == pytest.approx(0.5)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            scu_from_fp32_tflops(bad)


# --- (d) the wire models ----------------------------------------------------------------------


def test_calibration_round_trips(measured: tuple[Calibration, float, float]) -> None:
    cal, _, _ = measured
    assert Calibration.model_validate_json(cal.model_dump_json()) == cal
    wire = json.loads(cal.model_dump_json())
    assert wire["metrics"][0]["source"] == "measured" and wire["metrics"][0]["level"] == "L0"


def _metric(**change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "matmul",
        "level": "L0",
        "value": 1.5,
        "unit": "TFLOPS",
        "source": "nominal",
        "at": 1_700_000_000.0,
        "device": "gpu0",
        "precision": "fp32",
    }
    return base | change


def _calibration(**change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scu_version": 1,
        "scu": 1.5,
        "machine": "node1",
        "devices": ["gpu0"],
        "metrics": [_metric(), _metric(name="scu", level="L2", unit="SCU", precision=None)],
        "took_seconds": 0.0,
        "at": 1_700_000_000.0,
    }
    return base | change


def test_models_accept_a_catalog_record() -> None:
    cal = Calibration.model_validate(_calibration())
    assert cal.find("matmul", precision="fp32") == Metric.model_validate(_metric())
    assert cal.find("matmul", precision="fp64") is None


@pytest.mark.parametrize(
    "bad",
    [
        _calibration(owner="me"),  # unknown field
        _calibration(metrics=[_metric(colour="red")]),  # unknown field, nested
        _calibration(metrics=[_metric(value=math.nan)]),
        _calibration(metrics=[_metric(value=-1.0)]),
        _calibration(metrics=[_metric(source="guessed")]),
        _calibration(metrics=[_metric(level="L3")]),
        _calibration(metrics=[_metric(precision="fp12")]),
        _calibration(metrics=[_metric(name="Matmul TFLOPS")]),
        _calibration(metrics=[_metric(device="gpu7")]),  # outside the scope
        _calibration(scu=3.0),  # disagrees with its L2 parts
        _calibration(scu_version=0),
    ],
)
def test_models_reject_bad_records(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Calibration.model_validate(bad)
    with pytest.raises(ValidationError):
        Calibration.model_validate_json(json.dumps(bad, allow_nan=True))


# --- the GPU path, on a stand-in for torch ----------------------------------------------------


class _FakeTorch:
    """Just enough of torch's API, computing with numpy, to run the GPU path where no GPU
    is: it checks the plumbing (names, precisions, TF32 switched off and restored, one
    failing GPU left out), not the speed of any GPU."""

    # Half precisions computed in fp32: numpy has no fast fp16 product, and speed is not tested.
    float64, float32, float16, bfloat16 = np.float64, np.float32, np.float32, np.float32

    def __init__(self, gpus: int, broken: int | None = None) -> None:
        self.tf32_seen: list[bool] = []
        self.broken = broken
        matmul = type("M", (), {"allow_tf32": True})()
        self.backends = type("B", (), {"cuda": type("C", (), {"matmul": matmul})()})()
        fake = self

        class Cuda:
            @staticmethod
            def is_available() -> bool:
                return True

            @staticmethod
            def device_count() -> int:
                return gpus

            @staticmethod
            def mem_get_info(dev: tuple[str, int]) -> tuple[int, int]:
                if dev[1] == fake.broken:
                    raise RuntimeError("CUDA error: unspecified launch failure")
                return 96 << 20, 96 << 20

            @staticmethod
            def synchronize(dev: object) -> None:
                fake.tf32_seen.append(fake.backends.cuda.matmul.allow_tf32)

            @staticmethod
            def empty_cache() -> None:
                return None

        self.cuda = Cuda

    def device(self, kind: str, index: int) -> tuple[str, int]:
        return (kind, index)

    def rand(self, shape: tuple[int, ...], device: object, dtype: Any) -> Any:
        return np.random.default_rng(0).random(shape).astype(dtype)

    def empty(self, n: int, device: object, dtype: Any) -> Any:
        return np.empty(n, dtype=dtype)

    def full(self, shape: tuple[int, ...], value: float, device: object, dtype: Any) -> Any:
        return np.full(shape, value, dtype=dtype)

    def empty_like(self, a: Any) -> Any:
        return np.empty_like(a)

    def tensor(self, values: list[float], dtype: Any) -> Any:
        return type("T", (), {"element_size": lambda _: np.dtype(dtype).itemsize})()

    def matmul(self, a: Any, b: Any, out: Any) -> Any:
        return np.matmul(a, b, out=out)

    def add(self, b: Any, c: Any, alpha: float, out: Any) -> Any:
        return np.add(b, alpha * c, out=out)


def test_gpu_path_with_a_stand_in_for_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeTorch(gpus=3, broken=1)
    monkeypatch.setitem(sys.modules, "torch", fake)
    cal = calibrate(1, seconds=0.2)
    assert cal.devices == ["cpu0", "gpu0", "gpu2"]  # gpu1 failed and is left out
    for gpu in ("gpu0", "gpu2"):
        for precision in ("fp64", "fp32", "fp16", "bf16"):
            assert cal.find("matmul", device=gpu, precision=precision) is not None
        assert cal.find("triad", device=gpu) is not None
    parts = [m.value for m in cal.metrics if m.name == "scu"]
    assert len(parts) == 3 and cal.scu == pytest.approx(sum(parts))
    assert fake.tf32_seen and not any(fake.tf32_seen)  # FP32 products ran as FP32
    assert fake.backends.cuda.matmul.allow_tf32 is True  # and the setting came back
