"""Long-running commands: the node, the agent, and both together."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from pydantic import ValidationError

from computenet import config, yamlfile
from computenet.cli.output import CLIError, err, friendly, out
from computenet.model import PoolConfig
from computenet.model.common import parse_memory

node_app = typer.Typer(help="Run and manage a node.", no_args_is_help=True)
agent_app = typer.Typer(help="Run an agent that fronts a pool.", no_args_is_help=True)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


@node_app.command("serve")
def node_serve(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = config.DEFAULT_PORT,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="CNET_DATABASE_URL",
            help="database URL (default: SQLite in the data dir)",
        ),
    ] = None,
    code: Annotated[
        str, typer.Option(help="this node's code: the authority of its CPIs")
    ] = "local",
    data_dir: Annotated[Path | None, typer.Option(help="where the node keeps its files")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve the node's API."""
    from computenet.node.app import serve
    from computenet.node.settings import Settings

    _logging(log_level)
    where: dict[str, Any] = {} if data_dir is None else {"data_dir": data_dir}  # the db's too
    try:
        settings = Settings(database_url=db or "", host=host, port=port, code=code, **where)
    except OSError as e:  # CNET_SCHEDULING names a file that cannot be read
        raise CLIError(f"{e.filename}: {e.strerror}", 2) from e
    except ValueError as e:  # the code, or the scheduling file
        raise CLIError(str(e), 2) from e
    old = config.data_dir() / "node" / "computenet.db"
    moved = data_dir is not None and not (data_dir / "computenet.db").exists()
    if moved and not db and old.exists() and old.parent != data_dir:  # run this way before
        err.print(
            f"note: a new database in {data_dir}; before this release --data-dir kept "
            f"it at {old}: to go on with that one, pass --db sqlite:///{old}",
            markup=False,
            highlight=False,
        )
    _check_store(settings)
    serve(settings, log_level="warning")


def _check_store(settings: Any) -> None:
    """What the node could only fail on inside the server, said in one line first: a
    database it cannot open, a membership file that is damaged."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from computenet.node.federation import FILE, load_membership
    from computenet.node.store.db import make_engine

    try:
        shown = make_url(settings.database_url).render_as_string(hide_password=True)
        engine = make_engine(settings.database_url)
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise CLIError(f"--db: not a database URL this node can use: {e}", 2) from e
    except ModuleNotFoundError as e:
        raise CLIError(f"--db: no driver for it here ({e.name})", 2) from e
    try:
        with engine.connect():
            pass
    except OperationalError as e:
        why = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        raise CLIError(f"cannot open the database {shown}: {why}", 1) from e
    finally:
        engine.dispose()
    try:
        member = load_membership(settings.data_dir)
    except (ValueError, KeyError, TypeError) as e:
        where = settings.data_dir / FILE
        raise CLIError(f"{where} is damaged ({e}); restore it, or join the tree again", 1) from e
    if member is not None and settings.code not in ("local", member.code):
        raise CLIError(
            f"--code {settings.code}: this node is {member.code} of its tree, by its "
            "membership; its code comes from there",
            2,
        )


def _pool_config(path: Path | None) -> PoolConfig:
    if path is None:
        return PoolConfig()
    try:
        data = yamlfile.load(path.read_text()) or {}
        return PoolConfig.model_validate(data)
    except OSError as e:
        raise CLIError(f"{path}: {e.strerror}", 2) from e
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not UTF-8 text", 2) from None
    except yaml.YAMLError as e:
        raise CLIError(f"{path}: not valid YAML: {str(e).splitlines()[0]}", 2) from e
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise CLIError(f"{path}: {field}: {msg}", 2) from e


@agent_app.command("run")
def agent_run(
    node: Annotated[
        str, typer.Option(envvar="CNET_URL", help="the node's URL")
    ] = config.DEFAULT_URL,
    token: Annotated[
        str | None, typer.Option(envvar="CNET_TOKEN", help="a provider or admin token")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="a pool configuration file (YAML)")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="provider name")] = None,
    pool: Annotated[str | None, typer.Option(help="pool name (default: the hostname)")] = None,
    region: Annotated[str | None, typer.Option(help="region label, e.g. cn-east")] = None,
    backend: Annotated[str | None, typer.Option(help="local, ray or slurm")] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="join this Ray cluster (default: start a local head)")
    ] = None,
    partition: Annotated[str | None, typer.Option(help="Slurm partition to submit to")] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="backend setting KEY=VALUE")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="identity and job directories")] = None,
    provider_key: Annotated[
        Path | None,
        typer.Option(help="the provider's Ed25519 key (default: shared in the data directory)"),
    ] = None,
    heartbeat: Annotated[float | None, typer.Option(help="seconds between heartbeats")] = None,
    calibrate: Annotated[
        bool, typer.Option(help="measure this machine at start (cached for a day)")
    ] = True,
    data_root: Annotated[
        Path | None, typer.Option(help="what the data server serves (default: STATE_DIR/data)")
    ] = None,
    data_host: Annotated[str, typer.Option(help="the data server's bind address")] = "127.0.0.1",
    data_port: Annotated[
        int, typer.Option(help="the data server's port (0: any free)", min=0, max=65535)
    ] = 0,
    data_tls: Annotated[bool, typer.Option(help="advise clients to use TLS for data")] = False,
    data_quota: Annotated[
        str | None,
        typer.Option(help="the most the data root may hold, e.g. 500G; puts past it are refused"),
    ] = None,
    part_days: Annotated[
        float,
        typer.Option(help="days an unfinished copy's partial files are kept for it to resume"),
    ] = 7.0,
    fetch_rate: Annotated[
        str | None,
        typer.Option(
            help="the most bytes a second fetching jobs' inputs into this pool may take, "
            "e.g. 100M: the rest of the network is left to the jobs"
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Front a pool (this machine, or a Ray or Slurm cluster): register, heartbeat, run work."""
    from computenet.agent.agent import Agent, AgentConfig

    _logging(log_level)
    node = node.strip() if "://" in node else f"http://{node.strip()}"  # as CNET_URL reads
    if not httpx.URL(node).host or not node.startswith(("http://", "https://")):
        raise CLIError(f"--node: {node!r} is not a URL; for example http://127.0.0.1:8787", 2)
    token = token or config.token_for(node)
    if not token:
        raise CLIError(f"no token for {node}: pass --token or set CNET_TOKEN")
    pc = _pool_config(config_file)
    flags: dict[str, object] = {"provider": provider, "pool": pool, "region": region}
    flags |= {"backend": backend, "heartbeat": heartbeat}
    try:  # checked as the file's fields are: a bad one otherwise stops the agent unseen
        pc = PoolConfig.model_validate(
            pc.model_dump(exclude_unset=True) | {k: v for k, v in flags.items() if v is not None}
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise CLIError(f"--{first['loc'][0]}: {friendly(first)}", 2) from e
    options = dict(pc.options)
    if ray_address:
        options["address"] = ray_address
    if partition:
        options["partition"] = partition
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--option {item!r}: expected KEY=VALUE", 2)
        options[key] = value
    pool_name = pc.pool or ""
    try:
        quota = None if data_quota is None else int(parse_memory(data_quota))
    except ValueError as e:
        raise CLIError(f"--data-quota: {e}", 2) from None
    if not part_days > 0:
        raise CLIError(f"--part-days: {part_days:g} is not a number of days above 0", 2)
    try:
        rate = None if fetch_rate is None else int(parse_memory(fetch_rate))
    except ValueError as e:
        raise CLIError(f"--fetch-rate: {e}", 2) from None
    if rate is not None and rate < 10**6:  # a chunk a few seconds: well inside idle limits
        raise CLIError(f"--fetch-rate: {fetch_rate} is under 1 MB a second", 2)
    cfg = AgentConfig(
        node_url=node,
        token=token,
        state_dir=state_dir or config.data_dir() / "agent" / (pool_name or "default"),
        provider=pc.provider,
        pool=pool_name,
        region=pc.region,
        backend=pc.backend,
        options=options,
        labels=pc.labels,
        machines=pc.machines,
        capacity=pc.capacity,
        heartbeat_interval=pc.heartbeat,
        provider_key=provider_key,
        price=pc.price,
        carbon_intensity=pc.carbon_intensity,
        calibrate=calibrate,
        data_root=data_root,
        data_host=data_host,
        data_port=data_port,
        data_tls=data_tls,
        data_quota=quota,
        part_days=part_days,
        fetch_rate=rate,
    )

    held = _only_agent(cfg.state_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    try:
        asyncio.run(main())
    except Exception as e:
        raise CLIError(str(e)) from e
    finally:
        os.close(held)


def _only_agent(state_dir: Path) -> int:
    """Two agents with one state directory would be one pool twice: one identity, one
    heartbeat sequence, one job directory. The lock goes with the process."""
    import fcntl

    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CLIError(f"--state-dir {state_dir}: {e.strerror}", 2) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CLIError(
            f"another agent (pid {pid}) runs with {state_dir}: stop it, or run another "
            "pool beside it (--pool NAME, which has a state directory of its own)",
            1,
        ) from None
    except OSError as e:  # a file system without locks (NFS without lockd): run unguarded
        err.print(
            f"note: cannot lock {state_dir} ({e.strerror}); run one agent on it at a time",
            markup=False,
        )
        return fd
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


@agent_app.command("calibrate")
def agent_calibrate(
    cpus: Annotated[int | None, typer.Option(help="threads to measure with (default: all)")] = None,
    seconds: Annotated[float, typer.Option(help="time budget per device")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the record as JSON")] = False,
) -> None:
    """Measure this machine (matmul per precision, memory bandwidth) and print its SCU.

    The result replaces the cached calibration that agents on this machine register with
    from their next start; a running pool takes it with 'cnet pool calibrate POOL'.
    """
    from rich.table import Table

    from computenet.agent import calibrate as calibration
    from computenet.agent.probe import probe_machine, usable_cpus

    machine = probe_machine()
    cal = calibration.cached(
        config.data_dir() / "calibration",
        cpus or usable_cpus(),
        machine.name,
        seconds,
        refresh=True,
    )
    if as_json:
        print(cal.model_dump_json(indent=2))
        return
    table = Table(
        box=None, pad_edge=False, title=f"{machine.name}: {cal.scu:.3g} SCU v{cal.scu_version}"
    )
    for col in ("LEVEL", "METRIC", "VALUE", "UNIT", "DETAIL"):
        table.add_column(col)
    for m in cal.metrics:
        detail = " ".join(
            f"{k}={v}"
            for k, v in (
                ("device", m.device),
                ("precision", m.precision),
                ("size", m.size),
                ("repeats", m.repeats),
            )
            if v is not None
        )
        table.add_row(m.level.value, m.name, f"{m.value:.4g}", m.unit, detail)
    out.print(table)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CLIError(f"the node exited with code {proc.returncode}; see its output above")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise CLIError(f"the node did not answer at {url} within {timeout:.0f}s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def up(
    port: Annotated[int, typer.Option(help="node port", min=1, max=65535)] = config.DEFAULT_PORT,
    db: Annotated[
        str | None, typer.Option("--db", envvar="CNET_DATABASE_URL", help="database URL")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "warning",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", "-o", help="the agent's backend setting KEY=VALUE, e.g. user=NAME"
        ),
    ] = None,
) -> None:
    """Run a node and a local agent together; Ctrl-C stops both and every job they ran."""
    for item in option or []:
        if "=" not in item:
            raise CLIError(f"--option {item!r}: expected KEY=VALUE", 2)
    url = f"http://127.0.0.1:{port}"
    exe = [sys.executable, "-m", "computenet.cli.main"]
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise CLIError(f"port {port} is in use (another node?); pass --port to use another")
    env = dict(os.environ)
    if db:
        env["CNET_DATABASE_URL"] = db
    procs: list[subprocess.Popen[bytes]] = []
    # Children ignore the terminal's Ctrl-C; this process stops them in order instead, and
    # they die with it if it is killed outright.
    quiet: dict[str, Any] = {"start_new_session": True, "preexec_fn": _die_with_parent}
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even where a shell started us ignoring it
    try:
        node = subprocess.Popen(
            [*exe, "node", "serve", "--port", str(port), "--log-level", log_level], env=env, **quiet
        )
        procs.append(node)
        _wait_ready(url, node, 60)
        token = config.token_for(url)
        if not token:
            raise CLIError(
                f"no admin token for {url} in {config.credentials_path()}: the node saved it "
                "under the URL of its first start; set CNET_TOKEN to it"
            )
        agent = subprocess.Popen(
            [*exe, "agent", "run", "--node", url, "--log-level", log_level]
            + [arg for item in option or [] for arg in ("--option", item)],
            env={**env, "CNET_TOKEN": token},
            **quiet,
        )
        procs.append(agent)
        out.print(
            f"computenet node at [bold]{url}[/]  (admin token in {config.credentials_path()})"
        )
        out.print(f"token: {token}")
        if port != config.DEFAULT_PORT:
            out.print(f"first: export CNET_URL={url}")
        out.print("try:   cnet run -- python3 -c 'print(6*7)'     Ctrl-C stops everything")
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
        failed = next(p for p in procs if p.returncode is not None)
        raise CLIError(f"a component exited with code {failed.returncode}")
    except KeyboardInterrupt:
        err.print("stopping…")
    finally:
        for p in reversed(procs):  # agent first: it stops its jobs and reports them
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
