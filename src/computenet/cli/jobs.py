"""Job commands: run, submit, ps, logs, cancel."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from computenet import yamlfile
from computenet.cli.output import CLIError, ago, duration, err, friendly, out, state
from computenet.cli.session import client, pool_cpi
from computenet.model import Job, JobSpec, JobState
from computenet.model.common import format_bytes
from computenet.model.plan import Plan
from computenet.sdk import naming
from computenet.sdk.client import ApiError, Client

MAX_SPEC_FILE = 1024 * 1024
WAIT_NOTICE_S = 2.0


def spec_from(data: dict[str, Any], where: str) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "spec"
        prefix = f"{where}: " if where else ""
        raise CLIError(f"{prefix}{field}: {friendly(first)}", 2) from e


def attach(c: Client, job: Job) -> int:
    """Streams the job's output until it ends, then returns the exit code for the shell.
    Ctrl-C, or SIGTERM (``timeout``, a batch system ending the shell), cancels the job:
    it must not run on, or wait to, with nobody attached."""
    got: list[int] = []

    def stop(signum: int, frame: object) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, stop) if main else None
    started = threading.Event()
    threading.Thread(target=_tell_waiting, args=(c, job.id, started), daemon=True).start()
    try:
        for chunk in c.logs(job.id, follow=True):
            started.set()
            stream = sys.stdout if chunk["stream"] == "stdout" else sys.stderr
            stream.write(chunk["data"])
            stream.flush()
        final = c.wait(job.id)
    except KeyboardInterrupt:
        if main:  # one is enough: cancel it whole
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        c.cancel(job.id)
        err.print(f"canceled {job.id}")
        return 128 + (got[0] if got else signal.SIGINT)
    finally:
        started.set()
        if main:
            signal.signal(signal.SIGTERM, before)
    if final.state is JobState.COMPLETE:
        return 0
    err.print(
        f"{final.id} {final.state.value}: {final.reason or 'no reason given'}",
        soft_wrap=True,
        markup=False,  # a reason quotes the job's own text, brackets and all
    )
    if final.exit_code is not None and final.exit_code != 0:
        return final.exit_code
    return 1


def _tell_waiting(c: Client, job_id: str, started: threading.Event) -> None:
    """Says on stderr why a queued job waits, each time the reason changes: a run that
    only hangs (its pool down, a quota reached) looks broken."""
    said = ""
    while not started.wait(WAIT_NOTICE_S):
        try:
            job = c.get(job_id)
        except Exception:  # the log stream reports what matters
            return
        if job.state is not JobState.QUEUED:
            return
        if job.reason and job.reason != said:
            err.print(f"[dim]{job_id} queued: {escape(job.reason)}[/]", soft_wrap=True)
            said = job.reason


def run(
    command: Annotated[list[str], typer.Argument(help="the command, after --")],
    cpus: Annotated[float, typer.Option(help="CPU cores (fractions allowed)")] = 1.0,
    mem: Annotated[str, typer.Option(help="memory, e.g. 512M or 4G")] = "0",
    gpus: Annotated[int, typer.Option(help="accelerators of any kind and vendor")] = 0,
    accelerator: Annotated[
        str | None,
        typer.Option(help="which accelerators: H100:8, 'A100+', 'bf16>=300T,mem>=64G'"),
    ] = None,
    vendor: Annotated[
        str | None, typer.Option(help="accelerator vendors allowed, e.g. nvidia,amd")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="CPU architectures allowed, e.g. aarch64")
    ] = None,
    time: Annotated[
        str | None, typer.Option("--time", help="wall-clock limit, e.g. 90s, 10m")
    ] = None,
    name: Annotated[str, typer.Option(help="a name for the job")] = "",
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable")
    ] = None,
    pool: Annotated[str | None, typer.Option(help="run on this pool (its name or CPI)")] = None,
    optimize: Annotated[
        str | None,
        typer.Option(help="favour cost, time, carbon, balanced, or a goal the node defines"),
    ] = None,
    priority: Annotated[int, typer.Option(help="-1000..1000, higher first among yours")] = 0,
    region: Annotated[
        list[str] | None, typer.Option("--region", help="allowed region, repeatable")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="PATH=URI: a dataset or pool path, staged at PATH; repeatable"
        ),
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option(
            "--output", "-o", help="PATH=URI: what the job leaves at PATH, kept there; repeatable"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show the candidate pools and stop")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="print the job id and return")
    ] = False,
) -> None:
    """Run a command on the network: streams its output and exits with its exit code."""
    envs = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--env {item!r}: expected KEY=VALUE", 2)
        envs[key] = value
    data: dict[str, Any] = {
        "command": command,
        "name": name,
        "env": envs,
        "resources": {
            "cpus": cpus,
            "memory": mem,
            "gpus": gpus,
            "time": time,
            "accelerator": accelerator,
            "vendor": _words(vendor),
            "arch": _words(arch),
        },
        "inputs": [_data_pair(x, "--input") for x in inputs or []],
        "outputs": [_data_pair(x, "--output") for x in outputs or []],
        "pool": pool_cpi(pool),
        "regions": region or [],
        "optimize": optimize,
        "priority": priority,
    }
    spec = spec_from(data, "")
    if dry_run:
        with client() as c:
            plan = c.plan(spec)
        show_plan(plan)
        if not plan.candidates and not plan.decision.startswith("would wait"):
            raise typer.Exit(1)
        return
    submit_spec(spec, detach)


def _data_pair(item: str, flag: str) -> dict[str, str]:
    """``PATH=URI``, as a job file's ``{path, uri}``: the path in the job's working
    directory first, as in ``-e KEY=VALUE``."""
    path, sep, uri = item.partition("=")
    if not sep or not path or not uri:
        raise CLIError(f"{flag} {item!r}: expected PATH=URI, e.g. in=cnet://dataset/corpus", 2)
    return {"path": path, "uri": uri}


def _words(text: str | None) -> list[str]:
    return [w.strip().lower() for w in (text or "").split(",") if w.strip()]


def _wait(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def show_plan(plan: Plan) -> None:
    """SkyPilot-style: every candidate with its estimates, the choice, and the rejects."""
    table = Table(box=None, pad_edge=False, title=f"goal: {plan.goal}", title_justify="left")
    for col in ("", "POOL", "REGION", "NOW", "START", "COST", "SCU", "SCORE", "PARTS"):
        table.add_column(col, overflow="fold")
    for cand in plan.candidates:
        mark = "→" if cand.pool == plan.choice else ""
        cost = "-" if cand.est_cost is None else f"{cand.est_cost:.4g} {cand.currency or ''}"
        parts = " ".join(f"{k}={v:.0f}" for k, v in cand.parts.items())
        table.add_row(
            mark,
            cand.pool,
            cand.region or "-",
            "yes" if cand.fits_now else "no",
            f"{cand.est_start_s:.0f}s",
            cost,
            "-" if cand.scu is None else f"{cand.scu:.3g}",
            f"{cand.score:.1f}",
            parts,
        )
    out.print(table)
    for r in plan.rejected:
        out.print(f"[dim]rejected {r.pool}: {escape(r.reason)}[/]")
    out.print(plan.decision, markup=False)


def submit_spec(spec: JobSpec, detach: bool) -> None:
    with client() as c:
        job = c.submit(spec)
        if detach:
            out.print(job.id)
            return
        code = attach(c, job)
    raise typer.Exit(code)


def submit(
    file: Annotated[Path, typer.Argument(help="a YAML or JSON job spec", exists=False)],
    detach: Annotated[bool, typer.Option("--detach", "-d")] = False,
) -> None:
    """Submit a job described in a file (the same fields as the REST body)."""
    submit_spec(load_spec(file), detach)


def load_spec(file: Path) -> JobSpec:
    try:
        if file.stat().st_size > MAX_SPEC_FILE:
            raise CLIError(f"{file}: larger than {MAX_SPEC_FILE} bytes", 2)
        data = yamlfile.load(file.read_text())
    except OSError as e:
        raise CLIError(f"{file}: {e.strerror}", 2) from e
    except UnicodeDecodeError:
        raise CLIError(f"{file}: not UTF-8 text", 2) from None
    except yaml.YAMLError as e:
        raise CLIError(f"{file}: not valid YAML: {str(e).splitlines()[0]}", 2) from e
    if not isinstance(data, dict):
        raise CLIError(f"{file}: a job spec is a mapping of fields", 2)
    pool = data.get("pool")
    if isinstance(pool, str) and not pool.startswith("cpi:"):  # a name, as --pool takes
        try:
            with client() as c:
                found = c.discover(naming.query(pool), None, True, 10).items
            data["pool"] = naming.pool_cpi(pool, found)
        except ValueError as e:
            raise CLIError(f"{file}: {e}", 2) from None
    return spec_from(data, str(file))


def ps(
    state_: Annotated[
        list[JobState] | None, typer.Option("--state", help="filter by state")
    ] = None,
    all_tenants: Annotated[bool, typer.Option("--all", help="every tenant's jobs (admin)")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON, a job a line")] = False,
) -> None:
    """List jobs, newest first."""
    with client() as c:
        page = c.list(state=state_, limit=limit, all_tenants=all_tenants)
    if as_json:  # for scripts: every field, one job per line
        for j in page.items:
            print(j.model_dump_json())
        return
    table = Table(box=None, pad_edge=False)
    for col in ("JOB", "NAME / COMMAND", "STATE", "EXIT", "POOL", "SUBMITTED", "RAN"):
        table.add_column(col, no_wrap=col != "NAME / COMMAND", overflow="fold")
    for j in page.items:
        table.add_row(
            j.id,
            _label(j, 60),
            state(j.state),
            "-" if j.exit_code is None else str(j.exit_code),
            j.pool or "-",
            ago(j.created_at),
            duration(j.started_at, j.ended_at),
        )
    out.print(table)


def logs(
    job_id: Annotated[str, typer.Argument(help="job id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="until the job ends")] = False,
    attempt: Annotated[
        int | None,
        typer.Option(min=1, help="only this attempt's output (a requeued job has several)"),
    ] = None,
) -> None:
    """Print a job's output. Where it ran again (requeued), each later attempt's output is
    headed by a line on stderr."""
    shown = 0
    with client() as c:
        for chunk in c.logs(job_id, follow=follow):
            n = int(chunk.get("attempt") or 1)
            if attempt is not None and n != attempt:
                continue
            if attempt is None and n != shown and (shown or n > 1):
                sys.stdout.flush()
                err.print(f"--- attempt {n} ---", markup=False, highlight=False)
            shown = n
            stream = sys.stdout if chunk["stream"] == "stdout" else sys.stderr
            stream.write(chunk["data"])
            stream.flush()


def cancel(job_ids: Annotated[list[str], typer.Argument(help="job ids")]) -> None:
    """Cancel jobs: queued ones at once, running ones with their whole process tree."""
    failed: list[str] = []
    with client() as c:
        for job_id in job_ids:  # like scancel: one bad id does not keep the others running
            try:
                job = c.cancel(job_id)
                if not job.state.terminal:
                    job = c.wait(job_id, timeout=30)
            except ApiError as e:  # a line each, as any error; exit 1 once the rest are done
                err.print(f"error: {job_id}: {e}", markup=False, highlight=False)
                failed.append(job_id)
                continue
            out.print(f"{job.id} {state(job.state)}")
    if failed:
        raise typer.Exit(1)


def _label(j: Job, most: int) -> str:
    """A job's name or command on one line (a row per job), shown as typed: a ``[red]`` in
    it is not markup."""
    return escape(" ".join((j.name or " ".join(j.spec.command)).split())[:most])


def show(job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """One job in full: state and why, pool, exit code, times, and every attempt."""
    with client() as c:
        j = c.get(job_id)
    out.print(f"[bold]{j.id}[/] {_label(j, 80)}")
    out.print(f"state:     {state(j.state)}" + (f"  ({escape(j.reason)})" if j.reason else ""))
    out.print(f"exit code: {'-' if j.exit_code is None else j.exit_code}")
    out.print(f"pool:      {j.pool or '-'}")
    r = j.spec.resources
    out.print(
        f"request:   {r.cpus:g} CPUs, "
        + (f"{format_bytes(r.memory)} memory" if r.memory else "no memory limit")
        + f", {r.gpus} GPUs"
        + (f" ({r.accelerator})" if r.accelerator else "")
        + (f", vendor {','.join(r.vendor)}" if r.vendor else "")
        + (f", arch {','.join(r.arch)}" if r.arch else "")
        + (f", time {r.time:g}s" if r.time else "")
    )
    out.print(f"submitted: {ago(j.created_at)}; ran {duration(j.started_at, j.ended_at)}")
    for a in j.attempts:
        reason = f" ({escape(a.reason)})" if a.reason else ""
        out.print(f"  attempt {a.number} on {a.pool}: {state(a.state)}{reason}")
