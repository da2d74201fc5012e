"""Measure what this machine's devices really do, in raw figures and in SCU.

Datasheet peaks are what a pool could do under ideal clocks and software; the scheduler
and the prices need what it does. So the agent times the two kernels that bound most
work: dense matrix multiply (compute) and a STREAM triad (memory bandwidth).

Method, the usual one for sustained peaks: warm up, grow the problem until one run is long
enough to time reliably, then keep the best of several runs, since noise (other processes,
interrupts, frequency ramps) only ever makes a run slower. The CPU is measured with exactly
``cpus`` threads, because that is what the pool offers, not what the machine has.

Blocking and CPU-heavy by design (it must own the cores while it measures): the agent calls
it in a thread, before it accepts work.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from threadpoolctl import threadpool_info, threadpool_limits

from computenet.agent.probe import cpu_model
from computenet.model.metrics import Calibration, Metric, MetricLevel, MetricSource
from computenet.model.units import SCU_VERSION, l1_compute, l1_memory, scu_from_fp32_tflops

log = logging.getLogger("computenet.agent")

# Share of a device's time budget per phase: the two matrix products decide the SCU and
# need the longest runs; the triad reaches its plateau quickly (on the CPU it gets whatever
# the products left, since its array set-up costs the same whatever the budget).
_SHARE_MATMUL = 0.35
_SHARE_TRIAD = 0.30
_MIN_REPEATS = 3  # best of fewer is luck, not a peak
_MAX_REPEATS = 50
_FIRST_ORDER = 512  # small enough for a Raspberry Pi, a first rate estimate everywhere
_ORDER_STEP = 256  # BLAS kernels tile in powers of two; odd orders lose a few percent
_CPU_MATMUL_BYTES = 512 << 20  # three n*n matrices at most this large
_GPU_MATMUL_BYTES = 1 << 30
_CPU_TRIAD_MIN_BYTES = 64 << 20  # per array; at least twice the last-level cache, see below
_CPU_TRIAD_MAX_BYTES = 1 << 30
_GPU_TRIAD_ARRAY_BYTES = 1 << 30  # beyond the 256 MiB Infinity Cache of an MI300X
_TRIAD_CHUNK = 1 << 17  # elements (1 MiB of fp64): a[chunk] stays in cache between two ops
_TRIAD_SCALAR = 3.0

_NUMPY_DTYPES: dict[str, Any] = {"fp32": np.float32, "fp64": np.float64}


def calibrate(cpus: int, seconds: float = 2.0, *, machine: str | None = None) -> Calibration:
    """Measure the CPU (with ``cpus`` threads) and every CUDA/ROCm GPU torch can see.

    ``seconds`` is the time budget per device: the CPU takes about that, each GPU about as
    much again plus its context start. A phase overruns its share only to reach three timed
    runs, so slow machines stay bounded too. More threads than this process may run on
    would only contend, so ``cpus`` is capped at those (and the cap is recorded).
    """
    if cpus < 1:
        raise ValueError("cpus must be at least 1")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError("seconds must be a positive number")
    cpus = min(cpus, _usable_cpus())
    start = time.time()
    t0 = time.perf_counter()
    metrics = _cpu_metrics(cpus, seconds)
    metrics += _gpu_metrics(seconds)
    devices = sorted({m.device for m in metrics if m.device is not None})
    scu = sum(m.value for m in metrics if m.level is MetricLevel.L2 and m.name == "scu")
    took = time.perf_counter() - t0
    return Calibration(
        scu_version=SCU_VERSION,
        scu=scu,
        machine=machine,
        devices=devices,
        cpus=cpus,
        metrics=metrics,
        took_seconds=round(took, 3),
        at=max(start + took, *(m.at for m in metrics)),
    )


def cached(
    cache_dir: Path,
    cpus: int,
    machine: str,
    seconds: float = 2.0,
    max_age: float = 86400.0,
    refresh: bool = False,
) -> Calibration:
    """A calibration of this machine no older than ``max_age``, measured if there is none.

    Shared by every agent on the machine (the cache lives in the data directory, keyed by
    CPU model, CPU count and SCU version): measuring takes every core for seconds, which is
    worth paying once a day, not at every agent start.
    """
    key = hashlib.sha256(f"{cpu_model()}|{cpus}|{SCU_VERSION}".encode()).hexdigest()[:16]
    path = cache_dir / f"{key}.json"
    if not refresh:
        try:
            cal = Calibration.model_validate_json(path.read_text())
            if time.time() - cal.at < max_age:
                return cal.model_copy(update={"machine": machine})
        except (OSError, ValueError):
            pass
    cal = calibrate(cpus, seconds, machine=machine)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(cal.model_dump_json())
    os.replace(tmp, path)
    return cal


# --- timing, shared by the CPU and GPU paths ----------------------------------------------


def _best_time(
    run: Callable[[], object], sync: Callable[[], object], budget: float
) -> tuple[float, int]:
    """Shortest wall time of ``run`` over at least three repetitions, more while the budget
    lasts. ``sync`` waits for queued device work so that a GPU run is timed, not launched."""
    deadline = time.perf_counter() + budget
    best, repeats = math.inf, 0
    while repeats < _MIN_REPEATS or (repeats < _MAX_REPEATS and time.perf_counter() < deadline):
        sync()
        t = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - t)
        repeats += 1
    return best, repeats


def _matmul_tflops(
    make: Callable[[int], tuple[Any, Any, Any]],
    matmul: Callable[[Any, Any, Any], object],
    sync: Callable[[], object],
    itemsize: int,
    max_bytes: int,
    budget: float,
) -> tuple[float, int, int]:
    """Best dense matmul throughput (TFLOPS, order, repeats) within ``budget`` seconds.

    The order grows from 512 until one product takes a tenth of the budget, so that small
    machines are not stuck in one huge product and large ones are not timed on a size too
    small to keep their cores busy. The first product at each order is an untimed warm-up:
    on a GPU the very first one pays for the library's start, which would otherwise stop the
    growth at the smallest order, where launch latency hides the chip's throughput.
    """
    deadline = time.perf_counter() + budget
    target = budget / 10
    n_max = max(_ORDER_STEP, _round_order(math.sqrt(max_bytes / (3 * itemsize)), down=True))
    n = min(_FIRST_ORDER, n_max)
    while True:
        a, b, c = make(n)
        matmul(a, b, c)  # warm-up: page faults, a GPU library's start, kernel choice
        sync()
        t = time.perf_counter()
        matmul(a, b, c)
        sync()
        took = max(time.perf_counter() - t, 1e-9)
        if took >= target / 2 or n >= n_max:
            break
        rate = 2.0 * n**3 / took
        want = _round_order((rate * target / 2.0) ** (1 / 3), down=False)
        n = min(n_max, 2 * n, max(n + _ORDER_STEP, want))
        del a, b, c
    best, repeats = _best_time(
        lambda: matmul(a, b, c), sync, max(deadline - time.perf_counter(), 0.0)
    )
    return 2.0 * n**3 / best / 1e12, n, repeats


def _round_order(x: float, *, down: bool) -> int:
    steps = math.floor(x / _ORDER_STEP) if down else round(x / _ORDER_STEP)
    return max(1, steps) * _ORDER_STEP


def _device_metrics(
    device: str,
    matmul: dict[str, tuple[float, int, int, float]],
    triad: tuple[float, int, int, float],
) -> list[Metric]:
    """L0 figures as measured, and the L1 and L2 scores derived from them.

    ``matmul`` maps precision to (TFLOPS, order, repeats, time); ``triad`` is (GB/s,
    elements per array, repeats, time).
    """
    src = MetricSource.measured
    out = [
        Metric(
            name="matmul",
            level=MetricLevel.L0,
            value=tflops,
            unit="TFLOPS",
            source=src,
            at=at,
            device=device,
            precision=precision,
            size=n,
            repeats=repeats,
        )
        for precision, (tflops, n, repeats, at) in matmul.items()
    ]
    gbps, elements, repeats, triad_at = triad
    out.append(
        Metric(
            name="triad",
            level=MetricLevel.L0,
            value=gbps,
            unit="GB/s",
            source=src,
            at=triad_at,
            device=device,
            size=elements,
            repeats=repeats,
        )
    )
    fp32, _, _, fp32_at = matmul["fp32"]
    for name, level, value, unit, at in (
        ("compute", MetricLevel.L1, l1_compute(fp32), "1", fp32_at),
        ("memory", MetricLevel.L1, l1_memory(gbps), "1", triad_at),
        ("scu", MetricLevel.L2, scu_from_fp32_tflops(fp32), "SCU", fp32_at),
    ):
        out.append(
            Metric(name=name, level=level, value=value, unit=unit, source=src, at=at, device=device)
        )
    return out


# --- CPU: numpy on OpenBLAS (or whichever BLAS numpy was built with) -----------------------


def _cpu_metrics(cpus: int, seconds: float) -> list[Metric]:
    matmul: dict[str, tuple[float, int, int, float]] = {}
    # threadpoolctl sets the BLAS library's own thread count (and restores it afterwards);
    # environment variables such as OPENBLAS_NUM_THREADS are read once at import, too late.
    deadline = time.perf_counter() + seconds
    with threadpool_limits(limits=cpus, user_api="blas"):
        if not any(lib["user_api"] == "blas" for lib in threadpool_info()):
            log.warning("no BLAS found to limit to %d threads; CPU figures may be off", cpus)
        for precision in ("fp32", "fp64"):
            tflops, n, repeats = _cpu_matmul(_NUMPY_DTYPES[precision], seconds * _SHARE_MATMUL)
            matmul[precision] = (tflops, n, repeats, time.time())
    # The triad gets what the products left: it needs few runs, and its set-up (page faults
    # on some hundred MiB) costs about as much whatever the budget.
    gbps, elements, repeats = _cpu_triad(cpus, deadline)
    return _device_metrics("cpu0", matmul, (gbps, elements, repeats, time.time()))


def _cpu_matmul(dtype: Any, budget: float) -> tuple[float, int, int]:
    rng = np.random.default_rng(0)
    itemsize = int(np.dtype(dtype).itemsize)

    def make(n: int) -> tuple[Any, Any, Any]:
        """Sums of two random vectors: values in [0, 2) with no zeros, denormals or NaNs
        that could take a faster or slower path, at a tenth of the cost of n*n draws."""
        a = np.add.outer(rng.random(n, dtype=dtype), rng.random(n, dtype=dtype))
        b = np.add.outer(rng.random(n, dtype=dtype), rng.random(n, dtype=dtype))
        return a, b, np.empty_like(a)

    max_bytes = min(_CPU_MATMUL_BYTES, psutil.virtual_memory().available // 4)
    return _matmul_tflops(
        make, lambda a, b, c: np.matmul(a, b, out=c), _nothing, itemsize, max_bytes, budget
    )


def _nothing() -> None:
    return None


def _cpu_triad(cpus: int, deadline: float) -> tuple[float, int, int]:
    """STREAM triad a = b + s*c on fp64 arrays, counted as 3 arrays x 8 bytes per element.

    numpy has no fused multiply-add over arrays, and ``b + s*c`` would stream a temporary
    through memory; so each thread works through its slice in L2-sized chunks, writing
    ``s*c`` into ``a`` and adding ``b`` while that chunk of ``a`` is still in cache: memory
    sees one read of b and c and one write of a, as in STREAM. numpy ufuncs release the GIL,
    so ``cpus`` threads really run at once (a single core cannot saturate a memory system).

    Each array is at least twice the last-level cache (all of it, not one core's share), so
    the three together cannot be served from cache even on large L3 or V-Cache parts.
    """
    array_bytes = min(
        max(_CPU_TRIAD_MIN_BYTES, 2 * _last_level_cache_bytes()),
        _CPU_TRIAD_MAX_BYTES,
        psutil.virtual_memory().available // 12,
    )
    elements = max(_TRIAD_CHUNK, array_bytes // 8 // _TRIAD_CHUNK * _TRIAD_CHUNK)
    a, b, c = np.empty(elements), np.empty(elements), np.empty(elements)
    per = -(-elements // cpus // _TRIAD_CHUNK) * _TRIAD_CHUNK
    spans = [(lo, min(lo + per, elements)) for lo in range(0, elements, per)]

    def fill(span: tuple[int, int]) -> None:
        """First touch by the thread that will stream the slice, as STREAM does: page
        faults are taken in parallel and, on NUMA machines, pages land near their user."""
        lo, hi = span
        a[lo:hi], b[lo:hi], c[lo:hi] = 0.0, 1.0, 2.0

    def triad(span: tuple[int, int]) -> None:
        for lo in range(span[0], span[1], _TRIAD_CHUNK):
            hi = min(lo + _TRIAD_CHUNK, span[1])
            np.multiply(c[lo:hi], _TRIAD_SCALAR, out=a[lo:hi])
            np.add(a[lo:hi], b[lo:hi], out=a[lo:hi])

    with ThreadPoolExecutor(len(spans), thread_name_prefix="cnet-triad") as pool:

        def each(work: Callable[[tuple[int, int]], None]) -> None:
            for f in [pool.submit(work, s) for s in spans]:
                f.result()

        each(fill)
        each(triad)  # warm-up
        best, repeats = _best_time(
            lambda: each(triad), _nothing, max(deadline - time.perf_counter(), 0.0)
        )
    return 3 * 8 * elements / best / 1e9, elements, repeats


def _last_level_cache_bytes() -> int:
    """Total size of the highest cache level over all its instances (Linux sysfs), since
    many cores stream at once and together own all of it; 0 where unknown, which leaves
    the triad at its minimum size."""
    sizes: dict[tuple[int, str], int] = {}
    for index in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            level = int((index / "level").read_text())
            shared = (index / "shared_cpu_list").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        digits = size.rstrip("KMG")
        if digits.isdigit():
            sizes[(level, shared)] = int(digits) * factor
    if not sizes:
        return 0
    top = max(level for level, _ in sizes)
    return sum(size for (level, _), size in sizes.items() if level == top)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --- GPU: torch, CUDA or ROCm (torch.cuda covers both) --------------------------------------


def _gpu_metrics(seconds: float) -> list[Metric]:
    """One set of metrics per GPU torch sees, named ``gpu<torch index>``; nothing without
    torch or a GPU. A GPU that fails is logged and left out rather than failing the CPU's
    figures. Torch numbers devices fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, which
    the probe's NVML order matches."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    # FP32 means FP32: torch may run float32 products on TF32 tensor cores, 8x faster and
    # far less precise, which would inflate the SCU. Restored afterwards for the agent.
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    out: list[Metric] = []
    try:
        for i in range(torch.cuda.device_count()):
            try:
                out += _one_gpu(torch, i, seconds)
            except Exception as e:  # driver errors, out of memory: this GPU only
                log.warning("calibration of GPU %d failed: %s", i, e)
            finally:
                torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return out


def _one_gpu(torch: Any, index: int, seconds: float) -> list[Metric]:
    dev = torch.device("cuda", index)
    dtypes = {
        "fp32": torch.float32,
        "fp64": torch.float64,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
    }
    share = seconds * _SHARE_MATMUL * 2 / len(dtypes)  # same total as the CPU's two products
    free = int(torch.cuda.mem_get_info(dev)[0])

    def sync() -> None:
        torch.cuda.synchronize(dev)

    matmul: dict[str, tuple[float, int, int, float]] = {}
    for precision, dtype in dtypes.items():

        def make(n: int, dtype: Any = dtype) -> tuple[Any, Any, Any]:
            a = torch.rand((n, n), device=dev, dtype=dtype)
            return a, torch.rand((n, n), device=dev, dtype=dtype), torch.empty_like(a)

        size = torch.tensor([], dtype=dtype).element_size()
        tflops, n, repeats = _matmul_tflops(
            make,
            lambda a, b, c: torch.matmul(a, b, out=c),
            sync,
            size,
            min(_GPU_MATMUL_BYTES, free // 4),
            share,
        )
        matmul[precision] = (tflops, n, repeats, time.time())

    elements = max(1 << 20, min(_GPU_TRIAD_ARRAY_BYTES, free // 8) // 8)
    a = torch.empty(elements, device=dev, dtype=torch.float64)
    b = torch.full((elements,), 1.0, device=dev, dtype=torch.float64)
    c = torch.full((elements,), 2.0, device=dev, dtype=torch.float64)

    def triad() -> None:
        torch.add(b, c, alpha=_TRIAD_SCALAR, out=a)  # one fused kernel: a = b + s*c

    triad()
    best, repeats = _best_time(triad, sync, seconds * _SHARE_TRIAD)
    gbps = 3 * 8 * elements / best / 1e9
    return _device_metrics(f"gpu{index}", matmul, (gbps, elements, repeats, time.time()))
