"""Jobs, their attempts, and the one place where job state changes are judged legal."""

from __future__ import annotations

import functools
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from computenet.ident.cpi import CPIStr
from computenet.model.accelerator import Accelerators, resolve
from computenet.model.common import Labels, MemoryBytes, Model, Seconds
from computenet.model.dataset import MAX_DATA, DataInput, DataOutput

MAX_COMMAND_BYTES = 128 * 1024
MAX_ENV_BYTES = 128 * 1024
GOAL_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"  # a scheduling goal's name
ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def arch_name(arch: str) -> str:
    """A CPU architecture by the name Linux gives it: ``arm64`` (macOS) is ``aarch64``,
    ``AMD64`` (Windows) is ``x86_64``. Jobs and pools are matched by it."""
    a = arch.lower()
    return ARCH_ALIASES.get(a, a)


class JobState(StrEnum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    STAGING = "STAGING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.COMPLETE, JobState.FAILED, JobState.CANCELED})

# Back to QUEUED is a requeue: the attempt is lost (pool gone) and a new one will follow.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SCHEDULED, JobState.FAILED, JobState.CANCELED}),
    JobState.SCHEDULED: frozenset(
        {JobState.STAGING, JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.CANCELED}
    ),
    JobState.STAGING: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.CANCELED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.COMPLETE, JobState.QUEUED, JobState.FAILED, JobState.CANCELED}
    ),
    JobState.COMPLETE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, old: JobState, new: JobState) -> None:
        super().__init__(f"a job cannot go from {old.value} to {new.value}")
        self.old, self.new = old, new


def check_transition(old: JobState, new: JobState) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(old, new)


def passed(old: JobState, reported: JobState) -> bool:
    """Whether a job in ``old`` has already been through ``reported``: a report of it that
    arrives late, or twice, is old news rather than a conflict."""
    if reported.terminal:
        return False
    return old.terminal or (old is JobState.RUNNING and reported is JobState.STAGING)


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


class ResourceRequest(Model):
    cpus: float = Field(default=1.0, gt=0, le=4096, description="CPU cores; fractions allowed")
    memory: MemoryBytes = Field(default=0, description="bytes; 0 means no explicit request")
    gpus: int = Field(default=0, ge=0, le=1024, description="accelerators of any kind and vendor")
    time: Seconds | None = Field(default=None, description="wall-clock limit in seconds")
    accelerator: Annotated[str, Field(max_length=200)] | None = Field(
        default=None,
        description="which accelerators, in the catalog's terms: 'H100:8', 'A100+', "
        "'bf16>=300T,mem>=64G' (see computenet.model.accelerator)",
    )
    vendor: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]] = Field(
        default_factory=list, max_length=16, description="accelerator vendors allowed"
    )
    arch: list[Annotated[str, Field(pattern=r"^[a-z0-9_.-]{1,32}$")]] = Field(
        default_factory=list, max_length=16, description="CPU architectures allowed: aarch64"
    )

    @field_validator("arch")
    @classmethod
    def _arch_names(cls, v: list[str]) -> list[str]:
        """The names the kernel gives (``uname -m``), which pools report: ``amd64`` and
        ``x86-64`` are ``x86_64``, ``arm64`` is ``aarch64``."""
        return list(dict.fromkeys(arch_name(a) for a in v))

    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, v: str | None) -> str | None:
        if v is not None:
            accelerators(v)  # refused here, with the closest entries, if nothing can meet it
        return v

    @model_validator(mode="after")
    def _count(self) -> ResourceRequest:
        """``H100:8`` says how many; without a count, ``gpus`` does (at least one)."""
        if self.accelerator is None:
            return self
        n = accelerators(self.accelerator).count
        if n is not None and self.gpus not in (0, n):
            raise ValueError(f"accelerator asks for {n} devices but gpus is {self.gpus}")
        self.gpus = n or self.gpus or 1
        return self


@functools.cache
def runtime_of() -> dict[str, str]:
    """Each catalog entry's runtime family, by entry id."""
    from computenet import catalog

    return {e.id: e.runtime.value for e in catalog.load().entries}


@functools.lru_cache(maxsize=1024)
def accelerators(text: str) -> Accelerators:
    """What an accelerator request means in the packaged catalog (read once, then cached)."""
    from computenet import catalog

    return resolve(text, catalog.load())


def env_bytes(env: dict[str, str]) -> int:
    """What an environment takes, as ``KEY=VALUE`` strings with their ends."""
    return sum(len(k) + len(v.encode()) + 2 for k, v in env.items())


def check_command(v: list[str]) -> list[str]:
    if not v[0]:
        raise ValueError("the program name must not be empty")
    size = sum(len(a.encode()) + 1 for a in v)
    if size > MAX_COMMAND_BYTES:
        raise ValueError(f"command line is {size} bytes; the limit is {MAX_COMMAND_BYTES}")
    if any("\x00" in a for a in v):
        raise ValueError("command arguments must not contain NUL bytes")
    return v


class JobSpec(Model):
    """What a user asks for. The same model backs the REST body, the YAML file and the SDK."""

    name: Annotated[str, Field(max_length=128)] = ""
    command: list[Annotated[str, Field(max_length=MAX_COMMAND_BYTES)]] = Field(
        min_length=1, max_length=4096
    )
    env: dict[EnvName, Annotated[str, Field(max_length=MAX_ENV_BYTES)]] = Field(
        default_factory=dict, max_length=256
    )
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    pool: CPIStr | None = Field(default=None, description="pin the job to this pool")
    regions: list[Annotated[str, Field(pattern=r"^[a-z0-9-]{1,63}$")]] = Field(
        default_factory=list, max_length=64, description="run only in these regions"
    )
    optimize: Annotated[str, Field(pattern=GOAL_PATTERN)] | None = Field(
        default=None,
        description="what the scheduler favours: balanced, cost, time, carbon, or a goal the "
        "node's scheduling file defines; the node's default if unset",
    )
    priority: int = Field(default=0, ge=-1000, le=1000)
    labels: Labels = Field(default_factory=dict)
    variants: dict[
        Literal["cuda", "rocm", "cann", "oneapi", "habana", "bang", "xpu", "musa", "cpu"],
        Annotated[list[Annotated[str, Field(max_length=MAX_COMMAND_BYTES)]], Field(min_length=1)],
    ] = Field(
        default_factory=dict,
        description="a command per runtime family: the job goes only to pools that offer "
        "one of these runtimes (every pool offers cpu), and runs the variant for the "
        "devices it was given",
    )
    inputs: list[DataInput] = Field(
        default_factory=list,
        max_length=MAX_DATA,
        description="data staged into the working directory before the job starts",
    )
    outputs: list[DataOutput] = Field(
        default_factory=list,
        max_length=MAX_DATA,
        description="data kept after the job completes: published as a dataset or copied",
    )

    @field_validator("command")
    @classmethod
    def _command_size(cls, v: list[str]) -> list[str]:
        return check_command(v)

    @field_validator("variants")
    @classmethod
    def _variant_sizes(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for command in v.values():
            check_command(command)
        return v

    @model_validator(mode="after")
    def _env_size(self) -> JobSpec:
        size = env_bytes(self.env)
        if size > MAX_ENV_BYTES:
            raise ValueError(f"env is {size} bytes; the limit is {MAX_ENV_BYTES}")
        if any("\x00" in v for v in self.env.values()):
            raise ValueError("env values must not contain NUL bytes")
        return self

    @field_validator("inputs")
    @classmethod
    def _apart(cls, v: list[DataInput]) -> list[DataInput]:
        """Named by the later input's path, as a problem names a field. Only a later
        input at or inside an earlier one: specs stored before the node refused the
        other way round must still read back."""
        pair = overlapping(v, both_ways=False)
        if pair is not None:
            i, j = pair
            why = PydanticCustomError("overlap", "{why}", {"why": overlap_reason(v, i, j)})
            raise ValidationError.from_exception_data(
                "inputs", [InitErrorDetails(type=why, loc=(j, "path"), input=v[j].path)]
            )
        return v


def overlapping(inputs: list[DataInput], both_ways: bool = True) -> tuple[int, int] | None:
    """The first two inputs (earlier, later) that land at one path, or the later inside
    the earlier (``both_ways``: or the earlier inside the later)."""
    for j, later in enumerate(inputs):
        for i, earlier in enumerate(inputs[:j]):
            a, b = earlier.path, later.path
            if a == b or b.startswith(a + "/") or (both_ways and a.startswith(b + "/")):
                return i, j
    return None


def overlap_reason(inputs: list[DataInput], i: int, j: int) -> str:
    return (
        f"{inputs[j].path!r} and inputs.{i}.path {inputs[i].path!r}: two inputs cannot "
        "land at one path, nor one inside another"
    )


class Attempt(Model):
    number: int
    pool: str
    state: JobState
    scheduled_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    reason: str = ""


class Job(Model):
    id: str
    tenant: str
    name: str
    spec: JobSpec
    state: JobState
    pool: str | None = None
    attempt: int = 0
    exit_code: int | None = None
    reason: str = ""
    cancel_requested: bool = False
    created_at: datetime
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    attempts: list[Attempt] = Field(default_factory=list)


MAX_BATCH = 1000


class JobBatch(Model):
    """Many jobs in one request: accepted all together or not at all."""

    jobs: list[JobSpec] = Field(min_length=1, max_length=MAX_BATCH)


class JobPage(Model):
    items: list[Job]
    next: str | None = Field(default=None, description="cursor for the next page")
