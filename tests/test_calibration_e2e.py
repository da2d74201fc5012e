"""The pool a local agent registers carries this machine's measured figures, and `cnet
resources` shows them."""

from __future__ import annotations

import json

import pytest

from computenet.model import MetricLevel
from conftest import Network
from test_calibration import _independent_fp32_tflops

pytestmark = pytest.mark.slow


def test_registered_calibration_agrees_with_an_independent_measurement(shared: Network) -> None:
    with shared.client() as c:
        pool = next(p for p in c.pools() if p.name == "alpha")
    cal = pool.machines[0].calibration
    assert cal is not None and pool.scu == pytest.approx(cal.scu, rel=1e-4)
    fp32 = next(m for m in cal.metrics if m.name == "matmul" and m.precision == "fp32")
    assert fp32.source.value == "measured" and fp32.level is MetricLevel.L0
    # The registered figure was taken when the agent started; the test's own is taken now,
    # best of a few rounds, with the same number of threads.
    independent = max(_independent_fp32_tflops(cal.cpus) for _ in range(4))
    ratio = fp32.value / independent
    assert abs(ratio - 1) <= 0.20, f"registered {fp32.value:.4f} vs now {independent:.4f}"

    r = shared.cnet("resources")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if pool.cpi in line)
    assert f"{pool.scu:.3g} measured" in row


def test_agent_calibrate_prints_the_levels(shared: Network) -> None:
    r = shared.cnet("agent", "calibrate", "--seconds", "1", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    levels = {m["level"] for m in record["metrics"]}
    assert levels == {"L0", "L1", "L2"} and record["scu"] > 0
