"""The standard compute unit (SCU) and the normalisations built on it: the one place they live.

Capacity, requests and prices of different architectures only compare if they are stated
in one unit, and that unit only stays meaningful if its definition never changes silently.
So the definition is versioned here and every figure that uses it carries ``SCU_VERSION``:
a later version is a new unit, never a reinterpretation of old figures.
"""

from __future__ import annotations

import math

SCU_VERSION = 1
"""Carried by every calibration, so that figures measured under different definitions are
never added up or compared by mistake."""

SCU_DEFINITION = (
    "SCU v1: 1 SCU = 1 TFLOPS (10^12 floating-point operations per second) of sustained dense "
    "FP32 matrix multiply, measured on the device itself; a matrix product of order n counts "
    "2*n^3 operations. Per-precision and memory figures are recorded beside it."
)
"""FP32 is the one precision that every CPU and accelerator runs natively: FP64 is crippled
on most consumer and AI accelerators, and FP16/BF16/INT8 are missing or emulated on many
CPUs, so either would rank devices by a feature rather than by the work they do. Dense
matrix multiply is the kernel that reaches a device's sustained peak and dominates
scientific and AI workloads alike. "Measured" rather than datasheet peak, because turbo
limits, memory and software stacks make nominal peaks differ from reality by up to 2x."""

SCU_FP32_TFLOPS = 1.0
"""The FP32 matrix-multiply throughput that equals one SCU."""

REFERENCE_BYTES_PER_FLOP = 0.05
"""Machine balance of the reference device: memory bytes per FP32 operation.

Current hardware sits between about 0.03 (an MI300X) and 0.1 (an A100 80GB, a B200, a
laptop CPU), with an H100 and server CPUs near 0.05: that middle is taken, so that a device with
an L1 memory score above its L1 compute score is memory-rich for its compute, and below it
memory-poor. This is what makes the two L1 scores comparable with each other."""

REFERENCE_MEMORY_GBPS = SCU_FP32_TFLOPS * 1e12 * REFERENCE_BYTES_PER_FLOP / 1e9
"""STREAM-triad bandwidth (GB/s, 10^9 bytes) that scores 1.0 in the memory category: the
bandwidth that keeps one SCU of compute fed at the reference balance (50 GB/s)."""


def _finite_non_negative(x: float, what: str) -> float:
    value = float(x)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite non-negative number, not {x!r}")
    return value


def scu_from_fp32_tflops(x: float) -> float:
    """SCU (v1) for a sustained dense FP32 matrix-multiply throughput in TFLOPS.

    Kept as a function although it is a division by one, so that callers never hard-code
    the definition: a future version changes here and only here.
    """
    return _finite_non_negative(x, "FP32 TFLOPS") / SCU_FP32_TFLOPS


def l1_compute(fp32_tflops: float) -> float:
    """L1 compute score: FP32 matrix-multiply throughput relative to the reference device.

    In v1 the reference is one SCU, so this equals the L2 score; it is still reported on
    its own so that a later version may fold other categories into L2 without changing
    what the compute category means.
    """
    return _finite_non_negative(fp32_tflops, "FP32 TFLOPS") / SCU_FP32_TFLOPS


def l1_memory(triad_gbps: float) -> float:
    """L1 memory score: STREAM-triad bandwidth relative to ``REFERENCE_MEMORY_GBPS``.

    A ratio rather than a bounded 0-10 scale, because device bandwidths span four orders of
    magnitude and any cap would make the largest devices indistinguishable.
    """
    return _finite_non_negative(triad_gbps, "triad GB/s") / REFERENCE_MEMORY_GBPS
