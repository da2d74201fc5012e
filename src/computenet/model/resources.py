"""Providers, pools, machines and devices: what a pool offers, in architecture-neutral terms."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from computenet.ident.cpi import CPIStr
from computenet.model.common import Labels, MemoryBytes, Model, Name
from computenet.model.metrics import Calibration
from computenet.model.transfer import DataEndpoint

Precision = Annotated[str, Field(pattern=r"^(fp64|fp32|tf32|fp16|bf16|fp8|int8)$")]
ShortText = Annotated[str, Field(max_length=128)]


class DeviceKind(StrEnum):
    cpu = "cpu"
    gpu = "gpu"
    npu = "npu"
    fpga = "fpga"
    other = "other"


class PoolStatus(StrEnum):
    online = "online"
    suspect = "suspect"
    offline = "offline"


class Device(Model):
    """One schedulable accelerator (or a CPU socket, for the record)."""

    kind: DeviceKind
    name: Name
    index: int = Field(ge=0, le=4096)
    vendor: ShortText
    model: ShortText
    arch: ShortText = ""
    memory_bytes: MemoryBytes = 0
    uuid: ShortText = ""
    peak_tflops: dict[Precision, Annotated[float, Field(ge=0, le=1e6)]] = Field(
        default_factory=dict
    )
    cpi: CPIStr | None = None


class Machine(Model):
    name: Name
    hostname: ShortText = ""
    os: ShortText = ""
    arch: ShortText = ""
    cpu_model: ShortText = ""
    cpus: int = Field(ge=1, le=1_000_000)
    memory_bytes: MemoryBytes
    disk_bytes: MemoryBytes = 0
    devices: list[Device] = Field(default_factory=list, max_length=4096)
    calibration: Calibration | None = Field(
        default=None, description="measured by the agent; signed with the inventory"
    )
    cpi: CPIStr | None = None


class Capacity(Model):
    """The dimensions the scheduler fits on; CPUs are fractional, as in Kubernetes."""

    cpus: float = Field(default=0, ge=0, le=1_000_000)
    memory_bytes: MemoryBytes = 0
    gpus: int = Field(default=0, ge=0, le=100_000)

    def fits(self, other: Capacity) -> bool:
        return (
            other.cpus <= self.cpus + 1e-9
            and other.memory_bytes <= self.memory_bytes
            and other.gpus <= self.gpus
        )

    def minus(self, other: Capacity) -> Capacity:
        return Capacity(
            cpus=max(0.0, round(self.cpus - other.cpus, 6)),
            memory_bytes=max(0, self.memory_bytes - other.memory_bytes),
            gpus=max(0, self.gpus - other.gpus),
        )


class Price(Model):
    """What one hour of a pool's resources costs, in the provider's currency.

    A job's estimated cost is its request times these rates times its time limit; divided
    by the pool's SCU it becomes a price per standard compute unit, comparable across
    architectures.
    """

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "CNY"
    cpu_hour: float = Field(default=0.0, ge=0, le=1e6)
    gpu_hour: float = Field(default=0.0, ge=0, le=1e6)
    memory_gib_hour: float = Field(default=0.0, ge=0, le=1e6)

    def per_hour(self, cpus: float, gpus: int, memory_bytes: int) -> float:
        return (
            cpus * self.cpu_hour
            + gpus * self.gpu_hour
            + memory_bytes / 2**30 * self.memory_gib_hour
        )


Carbon = Annotated[float, Field(ge=0, le=5000, description="grams CO2e per kWh")]


class ProviderRegistration(Model):
    name: Name
    public_key: Annotated[str, Field(min_length=43, max_length=44)]
    display_name: ShortText = ""


class Provider(Model):
    cpi: CPIStr
    name: str
    public_key: str
    display_name: str = ""
    created_at: datetime


class PoolInventory(Model):
    """What an agent declares about its pool; signed by the provider's key at registration."""

    provider: Name
    name: Name
    public_key: Annotated[str, Field(min_length=43, max_length=44)]
    backend: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "local"
    region: Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9-]*$")] = ""
    labels: Labels = Field(default_factory=dict)
    machines: list[Machine] = Field(min_length=1, max_length=100_000)
    capacity: Capacity | None = None
    queue_factor: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="work beyond capacity the engine queues itself, as a multiple of capacity",
    )
    price: Price | None = None
    carbon_intensity: Carbon | None = None
    agent_version: ShortText = ""
    runtime: dict[str, ShortText] = Field(default_factory=dict, max_length=64)
    cpi: CPIStr | None = Field(
        default=None,
        description="the CPI the pool already has, when it registers again; a node refuses "
        "one it did not mint (another node's code, or its own before it joined a tree)",
    )
    data: DataEndpoint | None = Field(
        default=None, description="where the pool's data server takes transfers"
    )


class PoolRegistration(Model):
    inventory: PoolInventory
    signed_at: float
    signature: Annotated[str, Field(min_length=80, max_length=100)]


class Pool(Model):
    cpi: CPIStr
    provider: CPIStr
    name: str
    backend: str
    region: str
    labels: dict[str, str]
    status: PoolStatus
    capacity: Capacity
    allocated: Capacity
    machines: list[Machine]
    public_key: str
    registered_at: datetime
    last_heartbeat_at: datetime | None = None
    telemetry: dict[str, object] | None = None
    price: Price | None = None
    carbon_intensity: float | None = None
    scu: float | None = Field(default=None, description="standard compute units, measured")
    queue_factor: float = 0.0
    runtime: dict[str, str] = Field(
        default_factory=dict, description="the Python and packages its function workers run"
    )
    data: DataEndpoint | None = None

    @property
    def free(self) -> Capacity:
        return self.capacity.minus(self.allocated)


class PoolConfig(Model):
    """An agent's pool configuration file (YAML): who owns the pool, which backend runs its
    work and, for a pool that fronts a cluster or is described rather than probed, its
    declared machines."""

    provider: Name = "local"
    pool: Name | None = None
    region: Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9-]*$")] = ""
    labels: Labels = Field(default_factory=dict)
    backend: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "local"
    options: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")], ShortText] = Field(
        default_factory=dict, description="backend settings, e.g. address or partition"
    )
    machines: list[Machine] | None = Field(
        default=None, description="declared inventory; probed or read from the engine if absent"
    )
    capacity: Capacity | None = None
    price: Price | None = None
    carbon_intensity: Carbon | None = None
    heartbeat: Annotated[float, Field(gt=0, le=3600)] = 5.0
