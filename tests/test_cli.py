"""The command line where no node is needed: version, help, the catalog, bad options."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import httpx

from conftest import PYTHON, free_port


def cnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYTHON, *args], capture_output=True, text=True, timeout=60)


def test_version_and_bare_help() -> None:
    r = cnet("--version")
    assert r.returncode == 0 and r.stdout.strip().count(".") == 2
    bare = cnet()
    assert bare.returncode == 2 and "Commands" in bare.stdout


def test_catalog_lists_and_resolves_names() -> None:
    r = cnet("catalog", "--name", "H100", "--json")
    assert r.returncode == 0, r.stderr
    ids = {e["id"] for e in json.loads(r.stdout)}
    assert "nvidia-h100-sxm5-80gb" in ids and all(i.startswith("nvidia-h100") for i in ids)
    table = cnet("catalog", "--vendor", "huawei")
    assert table.returncode == 0 and "Ascend 910B" in table.stdout


def test_bad_options_fail_in_one_line_without_traceback() -> None:
    cases = (
        ("run", "--mem", "5Q", "--", "true"),
        ("run", "-e", "1BAD=x", "--", "true"),
        ("cp", "--sync", "bogus", "a", "b"),
        ("cp", "--streams", "0", "a", "b"),
        ("pool", "links", "extra"),
        ("nosuch",),
        ("cp", "--deadline", "0", "a", "cpi:x:y/z:/b"),
        ("cp", "--deadline", "00:00:00", "a", "cpi:x:y/z:/b"),
        ("cp", "--pool", "", "a", "cnet://dataset/x"),
        ("run", "--pool", " ", "--", "true"),
        ("ls", "--after", "", "cpi:x:y/z:/b"),
        ("up", "--port", "99999"),
        ("up", "--port", "0"),
        ("node", "serve", "--port", "99999"),
        ("agent", "run", "--data-port", "-1"),
        ("agent", "run", "--token", "x", "--heartbeat", "-5"),  # sent 1,800 heartbeats a second
        ("agent", "run", "--token", "x", "--heartbeat", "0"),  # became 5 s, unsaid
        ("agent", "run", "--token", "x", "--provider", "BAD_P"),  # the agent hung, unsaid
        ("agent", "run", "--token", "x", "--node", "ftp://127.0.0.1:1"),  # retried for ever
        ("node", "serve", "--db", "garbage"),
        ("node", "serve", "--db", "mysql://x@localhost/db"),
        ("node", "serve", "--code", "BAD_CODE"),
        ("node", "init", "--root", "--code", "BAD", "--url", "http://127.0.0.1:1"),
        ("catalog", "--vendor", "nosuch"),  # an empty table, exit 0
        ("tenant", "set", "x", "--no-limits", "--max-cpus", "2"),  # applied the 2, unsaid
        ("node", "join", "http://127.0.0.1:1", "--token", "cnj_nope", "--url", "http://x:1"),
        ("find", "--watch", "--order", "price"),  # the order was ignored, unsaid
    )
    for args in cases:
        r = cnet(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert "Value error" not in r.stderr and r.stderr.startswith("error: ")
    provider = cnet("agent", "run", "--token", "x", "--provider", "BAD_P").stderr
    assert "1 to 63 of a-z, 0-9, '_', '.', '-', starting with a-z, 0-9" in provider  # the form
    join = cnet("node", "join", "http://127.0.0.1:1", "--token", "cnj_nope", "--url", "http://x:1")
    assert "--token: not a join token" in join.stderr  # was "String should have at least 10"
    sync = cnet("cp", "--sync", "bogus", "a", "b").stderr
    assert "'--sync': 'bogus' is not one of 'none', 'exists'" in sync
    assert sync.rstrip().endswith("(see cnet cp --help)")


def test_help_wraps_to_the_terminal_not_to_the_source() -> None:
    """A docstring's line breaks are the source's, not the reader's: none shows."""
    r = subprocess.run(
        [*PYTHON, "pool", "links", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0
    assert "one nothing crossed for a week counts as unknown again" in r.stdout, r.stdout


def test_a_scheduling_file_a_node_cannot_use_stops_it_at_start(tmp_path: Path) -> None:
    """An unknown goal used to pass at start and fail every scheduling pass after it: the
    node ran, and no job was ever placed."""
    cases = {
        "goal: cheapest\n": "goal 'cheapest' is none of balanced, cost, time, carbon",
        "weights: {cost: {prise: 1}}\n": "weights.cost names no score prise",
        "weigths: {}\n": "unknown keys weigths",
        "goal: [\n": "not valid YAML",
        "weights: {cost: 3}\n": "weights.cost is a mapping {score: number}",
        "latency: {a: {b: .inf}}\n": "latency.a.b is inf: a finite number of at least 0",
        "weights: {cost: {price: -1}}\n": "weights.cost.price is -1: a finite number",
        "weights: {cost: {price: fast}}\n": "weights.cost.price is 'fast'",  # said nothing
        "latency: {cn-east: {cn-west: -5}}\n": "latency.cn-east.cn-west is -5",
        "region: CN East\n": "'CN East' is not a region's name",  # matched no pool, ever
        "weights: {Near: {network: 1}}\n": "weights.Near: a goal's name is",
    }
    for text, says in cases.items():
        f = tmp_path / "scheduling.yaml"
        f.write_text(text)
        env = {**os.environ, "CNET_SCHEDULING": str(f), "HOME": str(tmp_path)}
        args = ["node", "serve", "--port", "1", "--data-dir", str(tmp_path / "node")]
        r = subprocess.run([*PYTHON, *args], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 2, (text, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
        assert says in r.stderr, r.stderr
    env = {**os.environ, "CNET_SCHEDULING": str(tmp_path / "none.yaml"), "HOME": str(tmp_path)}
    r = subprocess.run(
        [*PYTHON, "node", "serve"], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 2 and "none.yaml: No such file or directory" in r.stderr, r.stderr


def test_a_node_keeps_its_database_in_its_data_dir(tmp_path: Path) -> None:
    """With --data-dir the database was still made in the default place: two nodes of one
    user shared it, tokens and tree included."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CNET_DATABASE_URL"}
    env["HOME"] = str(tmp_path / "home")
    kid = tmp_path / "kid"
    args = ["node", "serve", "--port", str(port), "--data-dir", str(kid)]
    proc = subprocess.Popen(
        [*PYTHON, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("the node did not start")
    finally:
        proc.terminate()
        proc.wait(30)
    assert (kid / "computenet.db").exists()
    assert not (tmp_path / "home" / ".local" / "share" / "computenet" / "node").exists()
    assert stat.S_IMODE(kid.stat().st_mode) == 0o700


def test_schema_into_a_place_it_cannot_write_fails_in_one_line() -> None:
    r = cnet("schema", "/etc/passwd/schemas")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_backend_options_it_cannot_take_are_said_at_once(tmp_path: Path) -> None:
    """A ray:// address waited 30 s and gave the wrong hint; '-o poll=abc' said only
    'could not convert string to float'."""
    env = {**os.environ, "CNET_HOME": str(tmp_path)}
    for args, says in (
        (("--backend", "ray", "--ray-address", "ray://127.0.0.1:1"), "ray://… is Ray Client"),
        (("--backend", "slurm", "-o", "poll=abc"), "(options given: poll=abc)"),
        (("--backend", "slurm", "-o", "conf=/no/such.conf"), "conf: /no/such.conf is not a file"),
    ):
        r = subprocess.run(
            [*PYTHON, "agent", "run", "--token", "x", "--node", "http://127.0.0.1:1", *args],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert r.returncode != 0 and says in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
