"""The standard interfaces: every router, the CLI, the SDK and the agent speak these models."""

from computenet.model.agent import (
    Assignment,
    AttemptRef,
    Directives,
    LogChunk,
    Report,
    ReportBatch,
    ReportResult,
)
from computenet.model.auth import Role, Token, TokenCreate, TokenSecret
from computenet.model.common import Model, parse_duration, parse_memory
from computenet.model.job import (
    TERMINAL,
    Attempt,
    IllegalTransition,
    Job,
    JobBatch,
    JobPage,
    JobSpec,
    JobState,
    ResourceRequest,
    check_transition,
)
from computenet.model.problem import FieldError, Problem
from computenet.model.resources import (
    Capacity,
    Device,
    DeviceKind,
    Machine,
    Pool,
    PoolInventory,
    PoolRegistration,
    PoolStatus,
    Provider,
    ProviderRegistration,
)
from computenet.model.telemetry import DeviceSample, Heartbeat, TelemetrySample
from computenet.model.usage import Usage, UsageRecord

__all__ = [
    "TERMINAL",
    "Assignment",
    "Attempt",
    "AttemptRef",
    "Capacity",
    "Device",
    "DeviceKind",
    "DeviceSample",
    "Directives",
    "FieldError",
    "Heartbeat",
    "IllegalTransition",
    "Job",
    "JobBatch",
    "JobPage",
    "JobSpec",
    "JobState",
    "LogChunk",
    "Machine",
    "Model",
    "Pool",
    "PoolInventory",
    "PoolRegistration",
    "PoolStatus",
    "Problem",
    "Provider",
    "ProviderRegistration",
    "Report",
    "ReportBatch",
    "ReportResult",
    "ResourceRequest",
    "Role",
    "TelemetrySample",
    "Token",
    "TokenCreate",
    "TokenSecret",
    "Usage",
    "UsageRecord",
    "check_transition",
    "parse_duration",
    "parse_memory",
]
