"""Metrics of what a device can do, and the calibration that measured them.

Shaped after the IETF CATS metric levels: L0 raw values with units (TFLOPS, GB/s), one
unitless L1 score per category (compute, memory) and one L2 score that compares across
architectures (the SCU, see ``computenet.model.units``). Every value says where it came
from and when, because a datasheet peak, an estimate and a measurement of the same device
differ, and a measurement ages.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from computenet.model.common import Model, Name

# Same spelling as ``computenet.model.resources.Precision``; defined here rather than
# imported so that resources may later embed a Calibration without an import cycle.
Precision = Annotated[str, Field(pattern=r"^(fp64|fp32|tf32|fp16|bf16|fp8|int8)$")]
MetricName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
UnixTime = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)]
Value = Annotated[float, Field(ge=0, le=1e18, allow_inf_nan=False)]


class MetricSource(StrEnum):
    nominal = "nominal"  # from a catalog or datasheet: what the vendor promises
    estimated = "estimated"  # derived, e.g. from a similar device or a partial run
    measured = "measured"  # timed on the device itself


class MetricLevel(StrEnum):
    L0 = "L0"  # raw value with a physical unit
    L1 = "L1"  # unitless score of one category, 1.0 = the reference device
    L2 = "L2"  # the one comparable score: SCU


class Metric(Model):
    """One value about one device (or the whole scope when ``device`` is empty)."""

    name: MetricName = Field(description="matmul, triad, compute, memory, scu")
    level: MetricLevel
    value: Value
    unit: Annotated[str, Field(max_length=16)] = Field(description="TFLOPS, GB/s, 1 or SCU")
    source: MetricSource
    at: UnixTime = Field(description="when the value was obtained, unix seconds")
    device: Name | None = None
    precision: Precision | None = None
    size: int | None = Field(
        default=None,
        ge=1,
        le=1 << 40,
        description="problem size: matrix order n for matmul, elements per array for triad",
    )
    repeats: int | None = Field(
        default=None, ge=1, le=1_000_000, description="timed runs the best was taken from"
    )


class CalibrationRequest(Model):
    """A calibration asked of a pool (``cnet pool calibrate``): the pool's agent measures
    and registers again; a calibration with ``at`` after ``requested_at`` is the answer."""

    pool: str
    requested_at: float


class Calibration(Model):
    """What one calibration found about a machine's devices, in SCU and in raw figures."""

    scu_version: int = Field(ge=1, le=1000)
    scu: Value = Field(description="sum of the devices' L2 scores")
    machine: Name | None = None
    devices: list[Name] = Field(default_factory=list, max_length=4096)
    cpus: int | None = Field(
        default=None, ge=1, le=1_000_000, description="CPU cores the CPU figures were taken on"
    )
    metrics: list[Metric] = Field(default_factory=list, max_length=65_536)
    took_seconds: float = Field(ge=0, le=86_400, allow_inf_nan=False)
    at: UnixTime = Field(description="when the calibration finished, unix seconds")

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        """Reject a record whose total disagrees with its parts: the total is what the
        scheduler adds up, the parts are what a person checks, so they must not drift."""
        scope = set(self.devices)
        for m in self.metrics:
            if m.device is not None and m.device not in scope:
                raise ValueError(f"metric {m.name} names device {m.device}, not in devices")
        parts = [m.value for m in self.metrics if m.level is MetricLevel.L2 and m.name == "scu"]
        if parts and not math.isclose(sum(parts), self.scu, rel_tol=1e-6, abs_tol=1e-9):
            raise ValueError(f"scu {self.scu} is not the sum of the L2 scu metrics {sum(parts)}")
        return self

    def find(
        self, name: str, *, device: str | None = None, precision: str | None = None
    ) -> Metric | None:
        """The first metric of that name (and device, and precision, when given)."""
        for m in self.metrics:
            if (
                m.name == name
                and (device is None or m.device == device)
                and (precision is None or m.precision == precision)
            ):
                return m
        return None
