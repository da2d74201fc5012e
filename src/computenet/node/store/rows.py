"""Row ↔ model conversion, kept in one place so that each model has one storage shape."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from computenet.model import (
    Attempt,
    Capacity,
    Job,
    JobSpec,
    JobState,
    Machine,
    Pool,
    PoolStatus,
    Price,
    Provider,
    Token,
)
from computenet.model.transfer import DataEndpoint


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def job(row: Any, attempts: list[Any] | None = None) -> Job:
    return Job(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        spec=JobSpec.model_validate(row.spec),
        state=JobState(row.state),
        pool=row.pool_cpi,
        attempt=row.attempt,
        exit_code=row.exit_code,
        reason=row.reason,
        cancel_requested=bool(row.cancel_requested),
        created_at=ts(row.created_at),
        scheduled_at=ts(row.scheduled_at),
        started_at=ts(row.started_at),
        ended_at=ts(row.ended_at),
        attempts=[attempt(a) for a in attempts or []],
    )


def attempt(row: Any) -> Attempt:
    return Attempt(
        number=row.number,
        pool=row.pool_cpi,
        state=JobState(row.state),
        scheduled_at=ts(row.scheduled_at),
        started_at=ts(row.started_at),
        ended_at=ts(row.ended_at),
        exit_code=row.exit_code,
        reason=row.reason,
    )


def pool(row: Any) -> Pool:
    return Pool(
        cpi=row.cpi,
        provider=row.provider_cpi,
        name=row.name,
        backend=row.backend,
        region=row.region,
        labels=row.labels,
        status=PoolStatus(row.status),
        capacity=Capacity(cpus=row.cap_cpus, memory_bytes=row.cap_memory, gpus=row.cap_gpus),
        allocated=Capacity(
            cpus=round(row.alloc_cpus, 6), memory_bytes=row.alloc_memory, gpus=row.alloc_gpus
        ),
        machines=[Machine.model_validate(m) for m in row.machines],
        public_key=row.public_key,
        registered_at=ts(row.registered_at),
        last_heartbeat_at=ts(row.last_heartbeat_at),
        telemetry=row.telemetry,
        price=Price.model_validate(row.price) if row.price else None,
        carbon_intensity=row.carbon_intensity,
        scu=row.scu,
        queue_factor=row.queue_factor,
        runtime=row.runtime or {},
        data=DataEndpoint.model_validate(row.data_endpoint) if row.data_endpoint else None,
    )


def provider(row: Any) -> Provider:
    return Provider(
        cpi=row.cpi,
        name=row.name,
        public_key=row.public_key,
        display_name=row.display_name,
        created_at=ts(row.created_at),
    )


def token(row: Any) -> Token:
    return Token(
        id=row.id,
        name=row.name,
        tenant=row.tenant,
        role=row.role,
        created_at=ts(row.created_at),
        revoked_at=ts(row.revoked_at),
        last_used_at=ts(row.last_used_at),
    )
