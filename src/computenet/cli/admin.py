"""Node-wide commands: status, resources, tokens, schemas."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from computenet.cli.output import CLIError, ago, err, fail, friendly, out
from computenet.cli.session import client, pool_cpi
from computenet.model import DeviceKind, Pool, Role, TenantPolicy
from computenet.model.common import format_bytes, parse_memory
from computenet.model.discovery import PoolSummary
from computenet.sdk.client import ApiError

token_app = typer.Typer(help="Create, list and revoke API tokens (admin).", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants' fair-share weights and quotas.", no_args_is_help=True)
pool_app = typer.Typer(
    help="One pool: its record, measuring it again, and the links between pools.",
    no_args_is_help=True,
)


@contextlib.contextmanager
def _as_flags() -> Iterator[None]:
    """A value refused before it is sent is named as the option it came from
    (``--weight``), not as the field it fills (``weight``); the argument as ``NAME``."""
    try:
        yield
    except ValidationError as e:
        first = e.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "input"
        flag = "NAME" if key == "name" else "--" + key.replace("_", "-")
        fail(f"{flag}: {friendly(first)}", 2)


@pool_app.command("show")
def pool_show(cpi: Annotated[str, typer.Argument(help="the pool's name or CPI")]) -> None:
    """The pool's whole record as JSON: inventory, calibration, price, state."""
    found = pool_cpi(cpi, "pool")
    assert found is not None
    with client() as c:
        print(c.pool(found).model_dump_json(indent=2))


@pool_app.command("links")
def pool_links(
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """The links between pools, each way, as measured.

    The node measures a link from the dataset copies that cross it; one nothing crossed
    for a week counts as unknown again (see docs/datasets.md).
    """
    with client() as c:
        links = c.links()
    if as_json:
        print(json.dumps([x.model_dump(mode="json") for x in links], indent=2))
        return
    if not links:
        out.print("no link measured yet: a link is measured once an input crosses it")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("FROM", "TO", "RATE", "SAMPLES", "LAST COPY"):
        table.add_column(col)
    for x in links:
        when = ago(datetime.fromtimestamp(x.updated_at, UTC))
        table.add_row(x.source, x.destination, f"{x.rate / 1e6:,.1f} MB/s", str(x.samples), when)
    out.print(table)


@pool_app.command("calibrate")
def pool_calibrate(
    cpi: Annotated[str, typer.Argument(help="the pool's name or CPI")],
    wait: Annotated[
        float, typer.Option(help="seconds to wait for the new figures; 0: don't")
    ] = 120,
) -> None:
    """Ask the pool's agent to measure its machine again (provider or admin).

    The agent runs the same measurement as at registration and registers the result; this
    waits for it and prints the new SCU. Jobs running on the machine meanwhile lower it.
    """
    cpi = pool_cpi(cpi, "pool") or cpi
    with client() as c:
        req = c.calibrate(cpi)
        if wait <= 0:
            out.print(f"calibration asked of {cpi}")
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pool = c.pool(cpi)
            cals = [m.calibration for m in pool.machines if m.calibration is not None]
            if cals and min(cal.at for cal in cals) > req.requested_at:
                out.print(f"{cpi}: {_scu(pool)}")
                return
            time.sleep(0.5)
    fail(f"{cpi} reported no new calibration within {wait:g} s")


@tenant_app.command("list")
def tenant_list() -> None:
    """Tenants with their weights, quotas and what they hold now."""
    with client() as c:
        tenants = c.tenants()
    table = Table(box=None, pad_edge=False)
    cols = ("TENANT", "WEIGHT", "CPUS IN USE", "MAX CPUS", "GPUS IN USE", "MAX GPUS", "MAX DATA")
    for col in cols:
        table.add_column(col)
    for t in tenants:
        table.add_row(
            t.name,
            f"{t.weight:g}",
            f"{t.cpus_in_use:g}",
            "-" if t.max_cpus is None else f"{t.max_cpus:g}",
            str(t.gpus_in_use),
            "-" if t.max_gpus is None else str(t.max_gpus),
            "-" if t.max_data is None else format_bytes(t.max_data),
        )
    out.print(table)


@tenant_app.command("set")
def tenant_set(
    name: Annotated[str, typer.Argument(help="tenant")],
    weight: Annotated[float | None, typer.Option(help="share under contention, relative")] = None,
    max_cpus: Annotated[float | None, typer.Option(help="CPUs it may hold at once")] = None,
    max_gpus: Annotated[int | None, typer.Option(help="accelerators it may hold at once")] = None,
    max_data: Annotated[
        str | None, typer.Option(help="what its home may hold in each pool: 512M, 10G, …")
    ] = None,
    no_limits: Annotated[bool, typer.Option("--no-limits", help="remove every quota")] = False,
) -> None:
    """Change a tenant's weight and quotas (admin); what you leave out stays as it was."""
    if no_limits and (max_cpus is not None or max_gpus is not None or max_data is not None):
        fail("--no-limits removes every quota: give it alone, or give the quotas alone", 2)
    try:
        data = None if max_data is None else int(parse_memory(max_data))
    except ValueError as e:
        fail(f"--max-data: {e}", 2)
    with client() as c:
        now = next((t for t in c.tenants() if t.name == name), None)
        keep = TenantPolicy() if no_limits or now is None else now
        with _as_flags():
            t = c.set_tenant(
                name,
                weight if weight is not None else (now.weight if now else 1.0),
                max_cpus if max_cpus is not None else keep.max_cpus,
                max_gpus if max_gpus is not None else keep.max_gpus,
                data if data is not None else keep.max_data,
            )
        if now is None and not any(
            x.tenant == name and x.revoked_at is None for x in c.tokens()
        ):  # most likely a typo; else set before its first token, which is allowed
            err.print(
                f"note: no tenant {name} was known and no live token names it; "
                f"the policy applies once one does (`cnet token create NAME --tenant {name}`)",
                soft_wrap=True,
                markup=False,
            )
    cpus = "-" if t.max_cpus is None else f"{t.max_cpus:g}"
    gpus = "-" if t.max_gpus is None else str(t.max_gpus)
    most = "-" if t.max_data is None else format_bytes(t.max_data)
    out.print(f"{t.name}: weight {t.weight:g}, max cpus {cpus}, max gpus {gpus}, max data {most}")


def status() -> None:
    """The node, its pools and its jobs at a glance."""
    with client() as c:
        s = c.status()
    out.print(f"node [bold]{s['code']}[/] at {c.url}  (computenet {s['version']}, {s['database']})")
    pools = ", ".join(f"{n} {k}" for k, n in s["pools"].items()) or "none"
    jobs = ", ".join(f"{n} {k}" for k, n in sorted(s["jobs"].items())) or "none"
    out.print(f"pools: {pools}")
    out.print(f"jobs:  {jobs}")


def resources() -> None:
    """Pools with their machines, devices and free capacity."""
    with client() as c:
        pools = c.pools()
    table = Table(box=None, pad_edge=False)
    for col in (
        "POOL",
        "STATUS",
        "BACKEND",
        "REGION",
        "CPUS FREE/TOTAL",
        "MEMORY",
        "ACCELERATORS",
        "SCU",
        "HEARTBEAT",
    ):
        table.add_column(col, overflow="fold")
    for p in pools:
        accel = [
            f"{d.vendor} {d.model}"
            for m in p.machines
            for d in m.devices
            if d.kind is not DeviceKind.cpu
        ]
        cpu_models = sorted({m.cpu_model for m in p.machines if m.cpu_model})
        table.add_row(
            p.cpi,
            p.status.value,
            p.backend,
            p.region or "-",
            f"{p.free.cpus:g}/{p.capacity.cpus:g}",
            f"{format_bytes(p.free.memory_bytes)}/{format_bytes(p.capacity.memory_bytes)}",
            ", ".join(accel) or "none",
            _scu(p),
            ago(p.last_heartbeat_at),
        )
        if cpu_models:
            table.add_row("", "", "", "", "[dim]" + "; ".join(cpu_models) + "[/]", "", "", "", "")
    out.print(table)


def _scu(pool: Pool) -> str:
    """The SCU figure and where it came from: measured (with its age) or nominal."""
    if pool.scu is None:
        return "-"
    cals = [m.calibration for m in pool.machines if m.calibration is not None]
    if not cals:
        return f"{pool.scu:.3g} nominal"
    newest = max(c.at for c in cals)
    return f"{pool.scu:.3g} measured {ago(datetime.fromtimestamp(newest, UTC))}"


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="a name for the token")],
    tenant: Annotated[str | None, typer.Option(help="tenant (default: the name)")] = None,
    role: Annotated[Role, typer.Option(help="admin, tenant or provider")] = Role.tenant,
) -> None:
    """Create a token; its secret is printed once."""
    with client() as c:
        with _as_flags():
            t = c.create_token(name, tenant, role)
        out.print(f"token {t.id} for tenant {t.tenant} ({t.role.value}); the secret is shown once:")
        print(t.secret, flush=True)  # before anything else can fail
        try:
            twins = [x.id for x in c.tokens() if x.name == name and x.revoked_at is None]
        except ApiError:
            twins = []
    if len(twins) > 1:  # allowed (a second secret for one agent), but revoke it by id
        err.print(
            f"note: {len(twins)} live tokens are named {name}: revoke one by its id",
            markup=False,
        )


@token_app.command("list")
def token_list() -> None:
    with client() as c:
        tokens = c.tokens()
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "NAME", "TENANT", "ROLE", "CREATED", "REVOKED"):
        table.add_column(col)
    for t in tokens:
        table.add_row(t.id, t.name, t.tenant, t.role.value, ago(t.created_at), ago(t.revoked_at))
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id, or its name where one has it")],
) -> None:
    """Revoke a token (admin): it stops working at once."""
    with client() as c:
        tokens = c.tokens()
        if token_id not in {t.id for t in tokens}:  # a name, as token list shows
            live = [t for t in tokens if t.name == token_id and t.revoked_at is None]
            if len(live) > 1:
                fail(f"token {token_id!r}: {len(live)} are named so: give its id", 2)
            if not live and not re.fullmatch(r"[0-9a-f]{1,32}", token_id):
                fail(f"token {token_id!r}: no live token is named so (cnet token list)", 2)
            token_id = live[0].id if live else token_id  # an id: the node says it has none
        before = next((t for t in tokens if t.id == token_id), None)
        t = c.revoke_token(token_id)
    if before is not None and before.revoked_at is not None:
        out.print(f"{t.id} ({t.name}) was revoked already")
        return
    out.print(f"revoked {t.id} ({t.name})")


def schema(
    directory: Annotated[Path, typer.Argument(help="where to write the schemas")] = Path("schemas"),
) -> None:
    """Export the standard interfaces as JSON Schema files."""
    from computenet.model.schema import export

    try:
        written = export(directory)
    except OSError as e:
        raise CLIError(f"{e.filename or directory}: {e.strerror}", 1) from e
    for path in written:
        out.print(str(path))


def find(
    query: Annotated[
        str, typer.Argument(help="e.g. 'gpu>=2 mem>=40G region=cn-east price<=3'")
    ] = "",
    order: Annotated[str | None, typer.Option(help="price, -scu, cpus, gpus, mem, carbon")] = None,
    all_pools: Annotated[bool, typer.Option("--all", help="include suspect and offline")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow changes live")] = False,
    tree: Annotated[
        bool, typer.Option("--tree", help="every node's pools in the hierarchy, not this node's")
    ] = False,
    for_job: Annotated[
        Path | None, typer.Option("--for", help="show the optimizer table for this job file")
    ] = None,
) -> None:
    """Discover pools that can take the given resources now."""
    if for_job is not None:
        from computenet.cli.jobs import load_spec, show_plan

        with client() as c:
            show_plan(c.plan(load_spec(for_job)))
        return
    if watch and (order is not None or tree):
        fail("--watch follows this node's pools as they change: without --order or --tree", 2)
    with client() as c:
        if watch:
            _watch(c.watch(query, all_pools))
            return
        page = c.discover(query, order, all_pools, limit, "tree" if tree else "local")
    table = Table(box=None, pad_edge=False)
    for col in (
        "POOL",
        "STATUS",
        "REGION",
        "CPUS",
        "MEMORY",
        "ACCELERATORS",
        "PRICE/H",
        "SCU",
        "gCO2/kWh",
    ):
        table.add_column(col, overflow="fold")
    for s in page.items:
        accel = ", ".join(
            f"{g.count}x {g.vendor} {g.model}"
            + (f" {format_bytes(g.memory_bytes)}" if g.memory_bytes else "")
            for g in s.accelerators
        )
        price = "-"
        if s.price is not None:
            price = f"{s.price.cpu_hour:g}/cpu"
            if s.capacity.gpus:
                price += f" {s.price.gpu_hour:g}/gpu"
            price += f" {s.price.currency}"
        table.add_row(
            s.cpi,
            s.status.value,
            s.region or "-",
            f"{s.free.cpus:g}/{s.capacity.cpus:g}",
            f"{format_bytes(s.free.memory_bytes)}/{format_bytes(s.capacity.memory_bytes)}",
            (f"{s.free.gpus}/{s.capacity.gpus} free: " + accel) if accel else "none",
            price,
            "-" if s.scu is None else f"{s.scu:.3g}",
            "-" if s.carbon_intensity is None else f"{s.carbon_intensity:g}",
        )
    out.print(table)
    out.print(f"[dim]{page.total} pool(s) matched in {page.took_ms:.2f} ms[/]")


def _watch(changes: Iterable[PoolSummary]) -> None:
    """One line a change, stamped with when it came: a pool's free capacity and status."""
    out.print("TIME      STATUS   POOL  FREE", markup=False)
    for s in changes:
        free = f"{s.free.cpus:g}/{s.capacity.cpus:g} cpus, {s.free.gpus}/{s.capacity.gpus} gpus"
        when = datetime.now().strftime("%H:%M:%S")
        out.print(f"{when}  {s.status.value:<8} {s.cpi}  {free}", markup=False)


def catalog(
    vendor: Annotated[
        str | None, typer.Option(help="only this vendor, e.g. nvidia, huawei")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="entries this name resolves to, e.g. H100")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="the entries as JSON, with sources")
    ] = False,
) -> None:
    """The accelerators and CPUs computenet knows: memory, dense peaks per precision, power."""
    from computenet.catalog import load

    cat = load()
    entries = list(cat.entries)
    if vendor:
        entries = cat.by_vendor(vendor)
        if not entries:  # a typo, not a vendor with no entries
            known = sorted({e.vendor for e in cat.entries})
            fail(f"--vendor {vendor}: no such vendor in the catalog; it has {', '.join(known)}", 2)
    if name:
        found = {e.id for e in cat.find(name)}
        entries = [e for e in entries if e.id in found]
    if as_json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "VENDOR", "MODEL", "ARCH", "MEMORY", "FP64", "FP32", "BF16", "INT8", "W"):
        table.add_column(col, overflow="fold")

    def peak(e: object, p: str) -> str:
        v = getattr(e, "peak_tflops", {}).get(p)
        return "-" if v is None else f"{v:g}"

    for e in entries:
        table.add_row(
            e.id,
            e.vendor,
            e.model,
            e.arch,
            "-" if e.memory_bytes is None else format_bytes(e.memory_bytes),
            peak(e, "fp64"),
            peak(e, "fp32"),
            peak(e, "bf16"),
            peak(e, "int8"),
            "-" if e.tdp_watts is None else f"{e.tdp_watts:g}",
        )
    out.print(table)
    out.print("[dim]dense peaks, TFLOPS (INT8: TOPS), per package; sources: cnet catalog --json[/]")
