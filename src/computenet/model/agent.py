"""The agent side of the node API: assignments down, reports and log chunks up."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from computenet.model.common import INT64, Model
from computenet.model.job import JobSpec, JobState
from computenet.model.usage import Usage

JobId = Annotated[str, Field(pattern=r"^j-[0-9a-z]{1,40}$")]
MAX_LOG_CHUNK = 256 * 1024


class AttemptRef(Model):
    job_id: JobId
    attempt: int = Field(ge=1, le=2**31 - 1)  # an Integer column


class Assignment(AttemptRef):
    """The attempt number is the fencing token: a report for an older attempt is refused."""

    tenant: str
    spec: JobSpec
    devices: list[int] = Field(default_factory=list)


class Directives(Model):
    """What the node wants a pool to do now."""

    assign: list[Assignment] = Field(default_factory=list)
    cancel: list[AttemptRef] = Field(default_factory=list)
    calibrate: bool = Field(
        default=False,
        description="measure the pool's machines again and register the new figures",
    )


class Report(AttemptRef):
    state: Literal[
        JobState.STAGING, JobState.RUNNING, JobState.COMPLETE, JobState.FAILED, JobState.CANCELED
    ]
    at: float
    exit_code: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    reason: Annotated[str, Field(max_length=4096)] = ""
    usage: Usage | None = None


class LogChunk(AttemptRef):
    stream: Literal["stdout", "stderr"]
    offset: int = Field(ge=0, le=INT64)
    data: Annotated[str, Field(max_length=MAX_LOG_CHUNK)]


class ReportBatch(Model):
    logs: list[LogChunk] = Field(default_factory=list, max_length=10_000)
    reports: list[Report] = Field(default_factory=list, max_length=10_000)


class ReportResult(Model):
    accepted: int
    refused: list[str] = Field(default_factory=list, description="why reports were refused")
    directives: Directives = Field(default_factory=Directives)


class HeartbeatAck(Model):
    """The node's answer to a heartbeat: attempts the pool must stop, because they were
    taken away from it (requeued elsewhere) while it was out of touch."""

    stop: list[AttemptRef] = Field(default_factory=list)
