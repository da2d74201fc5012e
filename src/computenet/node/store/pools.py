"""Providers and pools: signed registration, heartbeats, and liveness."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from computenet.ident import keys
from computenet.ident.cpi import CPI, parse
from computenet.model import (
    CalibrationRequest,
    Capacity,
    DeviceKind,
    Heartbeat,
    Machine,
    Pool,
    PoolRegistration,
    PoolStatus,
    Provider,
    ProviderRegistration,
)
from computenet.model.job import arch_name
from computenet.model.units import SCU_VERSION, scu_from_fp32_tflops
from computenet.node.errors import Conflict, Invalid, NotFound, Unauthorized
from computenet.node.store import rows
from computenet.node.store.tables import pools, providers, tokens

SIGNATURE_WINDOW = 300.0


def register_provider(
    conn: Connection, code: str, reg: ProviderRegistration, owner: str
) -> Provider:
    try:
        keys.public_key(reg.public_key)
    except keys.SignatureError as e:
        raise Invalid(str(e), field="public_key") from e
    row = conn.execute(select(providers).where(providers.c.name == reg.name)).first()
    if row is not None:
        if row.public_key != reg.public_key:
            raise Conflict(f"provider {reg.name!r} exists with another key", field="public_key")
        return rows.provider(row)
    cpi = str(CPI(code, (reg.name,)))
    conn.execute(
        providers.insert().values(
            cpi=cpi,
            name=reg.name,
            public_key=reg.public_key,
            display_name=reg.display_name,
            owner_tenant=owner,
            created_at=time.time(),
        )
    )
    return rows.provider(conn.execute(select(providers).where(providers.c.cpi == cpi)).one())


def signed_payload(reg: PoolRegistration) -> dict[str, object]:
    return {"inventory": reg.inventory.model_dump(mode="json"), "signed_at": reg.signed_at}


def capacity_of(reg: PoolRegistration) -> Capacity:
    inv = reg.inventory
    if inv.capacity is not None:
        return inv.capacity
    return Capacity(
        cpus=float(sum(m.cpus for m in inv.machines)),
        memory_bytes=sum(m.memory_bytes for m in inv.machines),
        gpus=sum(1 for m in inv.machines for d in m.devices if d.kind is not DeviceKind.cpu),
    )


def scu_of(machines: list[Machine]) -> tuple[float | None, list[dict[str, object]]]:
    """The pool's standard compute units: measured where the agent calibrated (current SCU
    version only), else the accelerators' nominal FP32 peaks where the inventory states them.
    """
    total, found, records = 0.0, False, []
    for m in machines:
        cal = m.calibration
        if cal is not None and cal.scu_version == SCU_VERSION:
            total += cal.scu
            found = True
            records.append(cal.model_dump(mode="json"))
            continue
        nominal = [d.peak_tflops["fp32"] for d in m.devices if "fp32" in d.peak_tflops]
        if nominal:
            total += sum(scu_from_fp32_tflops(x) for x in nominal)
            found = True
    return (round(total, 6) if found else None), records


def register_pool(
    conn: Connection,
    code: str,
    reg: PoolRegistration,
    token_id: str | None = None,
    live_within: float = 15.0,
) -> Pool:
    """The provider's signature proves the pool is theirs; the pool key then signs its traffic."""
    inv = reg.inventory
    prov = conn.execute(select(providers).where(providers.c.name == inv.provider)).first()
    if prov is None:
        raise NotFound(f"no provider {inv.provider!r}; register it first", field="provider")
    if abs(time.time() - reg.signed_at) > SIGNATURE_WINDOW:
        raise Unauthorized("registration signature is too old or from the future")
    try:
        keys.verify_json(prov.public_key, signed_payload(reg), reg.signature)
        keys.public_key(inv.public_key)
    except keys.SignatureError as e:
        raise Unauthorized(f"registration not signed by provider {inv.provider!r}: {e}") from e
    pool_cpi = CPI(code, (inv.provider, inv.name))
    if inv.cpi is not None and parse(inv.cpi).authority != code:
        raise Conflict(
            f"pool {inv.cpi} was minted under another code; this node mints under {code} "
            "only. A CPI never changes meaning: register the pool at the node that minted "
            "it, or start the agent afresh (a new state directory) to get a new CPI",
            field="inventory.cpi",
        )
    machines = []
    seen: set[str] = set()
    for m in inv.machines:
        if m.name in seen:
            raise Invalid(f"machine name {m.name!r} appears twice", field="inventory.machines")
        seen.add(m.name)
        mcpi = pool_cpi.child(m.name)
        devs = [d.model_copy(update={"cpi": str(mcpi.child(d.name))}) for d in m.devices]
        if len({d.name for d in devs}) != len(devs):
            raise Invalid(f"device names repeat on {m.name!r}", field="inventory.machines")
        machines.append(m.model_copy(update={"cpi": str(mcpi), "devices": devs}))
    cap = capacity_of(reg)
    values = {
        "provider_cpi": prov.cpi,
        "name": inv.name,
        "backend": inv.backend,
        "region": inv.region,
        "labels": inv.labels,
        "public_key": inv.public_key,
        "machines": [m.model_dump(mode="json") for m in machines],
        "status": PoolStatus.online.value,
        "cap_cpus": cap.cpus,
        "cap_memory": cap.memory_bytes,
        "cap_gpus": cap.gpus,
        "last_heartbeat_at": time.time(),
        "price": inv.price.model_dump(mode="json") if inv.price else None,
        "carbon_intensity": inv.carbon_intensity,
        "queue_factor": inv.queue_factor,
    }
    values["scu"], values["calibration"] = scu_of(machines)
    values["traits"] = traits_of(machines)
    values["runtime"] = dict(inv.runtime)
    values["data_endpoint"] = inv.data.model_dump(mode="json") if inv.data else None
    values["token_id"] = token_id
    existing = conn.execute(
        select(pools.c.public_key, pools.c.status, pools.c.last_heartbeat_at).where(
            pools.c.cpi == str(pool_cpi)
        )
    ).first()
    if (
        existing is not None
        and existing.public_key != inv.public_key
        and existing.status == PoolStatus.online.value
        and (existing.last_heartbeat_at or 0) > time.time() - live_within
    ):  # two agents of one pool would take turns, and run its jobs twice
        raise Conflict(
            f"pool {pool_cpi} is online with another agent's key: another agent serves it. "
            "Stop that agent, or name this pool otherwise (--pool); an agent whose state "
            "directory was lost may take the pool over once it shows suspect or offline",
            field="inventory.name",
        )
    if existing is None:
        conn.execute(
            pools.insert().values(
                cpi=str(pool_cpi),
                registered_at=time.time(),
                alloc_cpus=0.0,
                alloc_memory=0,
                alloc_gpus=0,
                last_seq=0,
                **values,
            )
        )
    else:
        conn.execute(update(pools).where(pools.c.cpi == str(pool_cpi)).values(**values))
    return get(conn, str(pool_cpi))


def get(conn: Connection, cpi: str) -> Pool:
    row = conn.execute(select(pools).where(pools.c.cpi == cpi)).first()
    if row is None:
        raise NotFound(f"no pool {cpi!r}", field="pool")
    return rows.pool(row)


def public_key(conn: Connection, cpi: str) -> tuple[str, str | None] | None:
    """The key the pool's requests are signed with, and the token it registered with;
    None where there is no such pool, or where that token is revoked (its agent must
    register again)."""
    row = conn.execute(
        select(pools.c.public_key, pools.c.token_id, tokens.c.revoked_at)
        .select_from(pools.outerjoin(tokens, tokens.c.id == pools.c.token_id))
        .where(pools.c.cpi == cpi)
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    return str(row.public_key), row.token_id


def suspend_token(conn: Connection, token_id: str) -> list[str]:
    """The online pools registered with a token just revoked turn suspect: no new work
    goes to them, and the liveness check takes them offline (and requeues their jobs)
    when no heartbeat of theirs is taken."""
    hit = [
        str(r.cpi)
        for r in conn.execute(
            select(pools.c.cpi).where(
                pools.c.token_id == token_id, pools.c.status == PoolStatus.online.value
            )
        )
    ]
    if hit:
        conn.execute(
            update(pools).where(pools.c.cpi.in_(hit)).values(status=PoolStatus.suspect.value)
        )
    return hit


def list_all(conn: Connection) -> list[Pool]:
    return [rows.pool(r) for r in conn.execute(select(pools).order_by(pools.c.registered_at))]


def list_providers(conn: Connection) -> list[Provider]:
    return [rows.provider(r) for r in conn.execute(select(providers).order_by(providers.c.name))]


def heartbeat(conn: Connection, cpi: str, hb: Heartbeat) -> bool:
    """Returns whether the pool came back (it was not online)."""
    row = conn.execute(select(pools.c.last_seq, pools.c.status).where(pools.c.cpi == cpi)).first()
    if row is None:
        raise NotFound(f"no pool {cpi!r}", field="pool")
    if hb.seq <= row.last_seq:
        raise Conflict(
            f"heartbeat seq {hb.seq} is not newer than {row.last_seq}: replayed or reordered",
            field="seq",
        )
    conn.execute(
        update(pools)
        .where(pools.c.cpi == cpi)
        .values(
            last_seq=hb.seq,
            last_heartbeat_at=time.time(),
            telemetry=hb.sample.model_dump(mode="json"),
            status=PoolStatus.online.value,
        )
    )
    return row.status != PoolStatus.online.value


def last_seq(conn: Connection, cpi: str) -> int:
    row = conn.execute(select(pools.c.last_seq).where(pools.c.cpi == cpi)).first()
    if row is None:
        raise NotFound(f"no pool {cpi!r}", field="pool")
    return int(row.last_seq)


_BEAT = (
    update(pools)
    .where(pools.c.cpi == bindparam("b_cpi"))
    .values(
        last_seq=bindparam("b_seq"),
        last_heartbeat_at=bindparam("b_at"),
        telemetry=bindparam("b_telemetry"),
        changed_at=pools.c.changed_at,  # contact is not a change the index needs to re-read
    )
)


def record_beats(conn: Connection, beats: list[dict[str, Any]]) -> None:
    """Persists the newest heartbeat of each pool, a batch at a time (see Beats)."""
    conn.execute(_BEAT, beats)


def judge_liveness(
    conn: Connection, suspect_after: float, offline_after: float
) -> dict[str, PoolStatus]:
    """Pools whose heartbeats stopped become suspect, then offline; returns what changed."""
    now = time.time()
    changed: dict[str, PoolStatus] = {}
    steps = (
        (PoolStatus.offline, offline_after, [PoolStatus.online, PoolStatus.suspect]),
        (PoolStatus.suspect, suspect_after, [PoolStatus.online]),
    )
    for status, age, before in steps:
        found = conn.execute(
            update(pools)
            .where(
                pools.c.last_heartbeat_at < now - age,
                pools.c.status.in_([b.value for b in before]),
            )
            .values(status=status.value)
            .returning(pools.c.cpi)
        ).all()
        for r in found:
            changed[r.cpi] = status
    return changed


def states(conn: Connection, since: float = 0.0) -> dict[str, tuple[float, int, int, str]]:
    """Allocation and status, as plain values, of the pools changed since ``since``: the
    live index's refresh, cheap at 100,000 pools because it reads only what changed."""
    found = conn.execute(
        select(
            pools.c.cpi,
            pools.c.alloc_cpus,
            pools.c.alloc_memory,
            pools.c.alloc_gpus,
            pools.c.status,
        ).where(pools.c.changed_at >= since)
    ).all()
    return {r.cpi: (round(r.alloc_cpus, 6), r.alloc_memory, r.alloc_gpus, r.status) for r in found}


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(pools)).scalar_one())


def get_many(conn: Connection, cpis: list[str]) -> list[Pool]:
    return [rows.pool(r) for r in conn.execute(select(pools).where(pools.c.cpi.in_(cpis)))]


def _state(r: Any) -> tuple[Capacity, PoolStatus]:
    return (
        Capacity(
            cpus=max(0.0, round(r.alloc_cpus, 6)),
            memory_bytes=max(0, r.alloc_memory),
            gpus=max(0, r.alloc_gpus),
        ),
        PoolStatus(r.status),
    )


def allocations(conn: Connection, cpis: list[str]) -> dict[str, tuple[Capacity, PoolStatus]]:
    """What each pool has handed out now, for the live index."""
    if not cpis:
        return {}
    found = conn.execute(
        select(
            pools.c.cpi,
            pools.c.alloc_cpus,
            pools.c.alloc_memory,
            pools.c.alloc_gpus,
            pools.c.status,
        ).where(pools.c.cpi.in_(cpis))
    ).all()
    return {
        r.cpi: (
            Capacity(
                cpus=max(0.0, round(r.alloc_cpus, 6)),
                memory_bytes=max(0, r.alloc_memory),
                gpus=max(0, r.alloc_gpus),
            ),
            PoolStatus(r.status),
        )
        for r in found
    }


def leave(conn: Connection, cpi: str) -> bool:
    """An agent that says goodbye: no new work for its pool from now on.

    Suspect rather than offline: work that outlives the agent (a Slurm job) keeps running
    for its successor to adopt, and only if none comes back in time does the pool go
    offline and its work get requeued, as for any silent pool.
    """
    return bool(
        conn.execute(
            update(pools)
            .where(pools.c.cpi == cpi, pools.c.status == PoolStatus.online.value)
            .values(status=PoolStatus.suspect.value)
        ).rowcount
    )


def request_calibration(conn: Connection, cpi: str, tenant: str | None) -> CalibrationRequest:
    """``tenant`` is the asker's, who must own the pool's provider (``None``: an admin)."""
    row = conn.execute(
        select(pools.c.backend, pools.c.status, providers.c.owner_tenant)
        .join(providers, providers.c.cpi == pools.c.provider_cpi)
        .where(pools.c.cpi == cpi)
    ).first()
    if row is None or (tenant is not None and row.owner_tenant != tenant):
        raise NotFound(f"no pool {cpi!r}", field="pool")
    if row.backend != "local":
        raise Conflict(
            f"pool {cpi} fronts a {row.backend} cluster: its agent does not measure the "
            "cluster's nodes",
            field="pool",
        )
    if row.status != PoolStatus.online.value:
        raise Conflict(f"pool {cpi} is {row.status}: no agent to measure it", field="pool")
    at = time.time()
    conn.execute(_ASK_CALIBRATION, {"b_cpi": cpi, "b_at": at})
    return CalibrationRequest(pool=cpi, requested_at=at)


def take_calibration(conn: Connection, cpi: str) -> bool:
    """Whether a calibration was asked of this pool since it was last told; tells it once."""
    return bool(conn.execute(_TAKE_CALIBRATION, {"b_cpi": cpi}).first())


_ASK_CALIBRATION = (
    update(pools)
    .where(pools.c.cpi == bindparam("b_cpi"))
    .values(calibrate_requested_at=bindparam("b_at"), changed_at=pools.c.changed_at)
)
_TAKE_CALIBRATION = (
    update(pools)
    .where(pools.c.cpi == bindparam("b_cpi"), pools.c.calibrate_requested_at.is_not(None))
    .values(calibrate_requested_at=None, changed_at=pools.c.changed_at)
    .returning(pools.c.cpi)
)


def traits_of(machines: list[Machine]) -> dict[str, Any]:
    """Each accelerator as the catalog knows it (``""`` when it does not), and the CPU
    architectures: what ``--accelerator``, ``--vendor`` and ``--arch`` are matched with."""
    from computenet import catalog

    cat = catalog.load()
    devices = []
    for m in machines:
        for d in m.devices:
            if d.kind is DeviceKind.cpu:
                continue
            entry = cat.identify(d.vendor, d.model, d.memory_bytes or None)
            devices.append([d.index, entry.id if entry else "", d.vendor.lower()])
    archs = sorted({arch_name(m.arch) for m in machines if m.arch})
    return {"devices": devices, "archs": archs}
