"""Prometheus metrics of a node, exported at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
