"""Prometheus metrics of a node, exported at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_SUBMITTED = Counter("cnet_jobs_submitted", "Jobs accepted", ["tenant"])
JOBS_ENDED = Counter("cnet_jobs_ended", "Attempts that reached a terminal state", ["state"])
HEARTBEATS = Counter("cnet_heartbeats", "Heartbeats accepted")
REFUSED = Counter("cnet_reports_refused", "Agent reports refused (stale, illegal, foreign)")
SCHEDULE_PASS = Histogram(
    "cnet_schedule_pass_seconds",
    "Duration of one scheduling pass",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PLACED = Counter("cnet_jobs_placed", "Placements made by the scheduler")

# Read at each scrape, from the live index and the database: what an operator watches.
POOLS = Gauge("cnet_pools", "Pools by status", ["status"])
CAPACITY = Gauge("cnet_capacity", "What the online pools hold", ["resource"])
FREE = Gauge("cnet_free", "What the online pools hold free now", ["resource"])
JOBS = Gauge("cnet_jobs", "Jobs not yet ended, by state", ["state"])
