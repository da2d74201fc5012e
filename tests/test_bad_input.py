"""Bad input against a real node: every refusal is problem+json naming the field, and
nothing is half-written. Over real HTTP, and through the CLI."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from computenet.ident import requests as signed
from computenet.ident.keys import KeyPair
from computenet.model import Heartbeat, TelemetrySample

if TYPE_CHECKING:
    from conftest import Network

PROBLEM = "application/problem+json"
MIB = 1024 * 1024


@dataclass
class Tenants:
    rejected: str  # only ever sends bad submissions: must end with no jobs at all
    a: str
    b: str


@pytest.fixture(scope="module")
def tenants(shared: Network) -> Tenants:
    with shared.client() as admin:
        return Tenants(
            rejected=admin.create_token("rejected", "rejected").secret,
            a=admin.create_token("tenant-a", "tenant-a").secret,
            b=admin.create_token("tenant-b", "tenant-b").secret,
        )


@pytest.fixture(scope="module")
def pool_cpi(shared: Network) -> str:
    return shared.wait_pool("alpha")


@pytest.fixture(scope="module")
def pool_key(shared: Network) -> KeyPair:
    path = shared.home / "agents" / "alpha" / "identity" / "pool.key"
    assert path.exists(), "the agent keeps its pool key here"
    return KeyPair.load_or_create(path)


def http(shared: Network, token: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=shared.url, headers=headers, timeout=30)


def problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert body["title"]
    assert "Traceback" not in resp.text
    return body


def fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]


def total_jobs(shared: Network, token: str | None = None) -> int:
    """All jobs on the node (admin), or one tenant's jobs."""
    with http(shared, token or shared.token) as c:
        if token is None:
            resp = c.get("/v1/status")
            assert resp.status_code == 200
            return sum(resp.json()["jobs"].values())
        resp = c.get("/v1/jobs/counts")
        assert resp.status_code == 200
        listed = c.get("/v1/jobs", params={"limit": 1000})
        assert listed.status_code == 200
        n = sum(resp.json().values())
        assert len(listed.json()["items"]) == n
        return n


@contextlib.contextmanager
def nothing_written(shared: Network, tenants: Tenants) -> Iterator[None]:
    before = total_jobs(shared)
    yield
    assert total_jobs(shared) == before
    assert total_jobs(shared, tenants.rejected) == 0


# --- job submissions that must be refused ----------------------------------------------------

BAD_SPECS = [
    ("negative-cpus", {"command": ["true"], "resources": {"cpus": -1}}, "resources.cpus"),
    ("zero-cpus", {"command": ["true"], "resources": {"cpus": 0}}, "resources.cpus"),
    ("memory-2000P", {"command": ["true"], "resources": {"memory": "2000P"}}, "resources.memory"),
    ("memory-1e20", {"command": ["true"], "resources": {"memory": 10**20}}, "resources.memory"),
    ("negative-gpus", {"command": ["true"], "resources": {"gpus": -1}}, "resources.gpus"),
    ("bad-time", {"command": ["true"], "resources": {"time": "-5m"}}, "resources.time"),
    ("unknown-field", {"command": ["true"], "comand": ["x"]}, "comand"),
    ("unknown-nested", {"command": ["true"], "resources": {"cpu": 2}}, "resources.cpu"),
    ("no-command", {"name": "x"}, "command"),
    ("empty-command", {"command": []}, "command"),
    ("empty-program", {"command": ["", "x"]}, "command"),
    ("nul-byte", {"command": ["echo", "a\x00b"]}, "command"),
    ("bad-env-key", {"command": ["true"], "env": {"1BAD": "x"}}, "env"),
    ("bad-pool-cpi", {"command": ["true"], "pool": "alpha"}, "pool"),
    ("not-an-object", ["true"], "body"),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS]
)
def test_invalid_spec_refused(shared: Network, tenants: Tenants, body: Any, field: str) -> None:
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(c.post("/v1/jobs", json=body), 422)
    assert any(f == field or f.startswith(field + ".") for f in fields(p)), p
    assert field.split(".")[-1] in p["detail"]
    assert p["instance"] == "/v1/jobs"


def test_a_form_is_said_not_shown_as_a_pattern(shared: Network, tenants: Tenants) -> None:
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(c.post("/v1/jobs", json={"command": ["true"], "env": {"1BAD": "x"}}), 422)
    assert "'1BAD' is not in the allowed form: 1 to 128 of A-Z, a-z, 0-9, '_'" in p["detail"]
    assert "^[" not in p["detail"]


def test_unknown_field_says_so(shared: Network, tenants: Tenants) -> None:
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(c.post("/v1/jobs", json={"command": ["true"], "resources": {"cpu": 2}}), 422)
    assert p["errors"] == [{"field": "resources.cpu", "message": "unknown field"}]


def test_megabyte_command_line_refused(shared: Network, tenants: Tenants) -> None:
    body = {"command": ["echo", "x" * MIB]}
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        resp = c.post("/v1/jobs", json=body)
        assert resp.status_code in (413, 422), resp.text[:300]
        p = problem(resp, resp.status_code)
    if resp.status_code == 422:
        assert any(f.startswith("command") for f in fields(p)), p


def test_command_over_total_limit_refused(shared: Network, tenants: Tenants) -> None:
    """Each argument under the per-argument limit, the whole line over it."""
    body = {"command": ["echo", "x" * 100_000, "y" * 100_000]}
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(c.post("/v1/jobs", json=body), 422)
    assert fields(p) == ["command"]
    assert "the limit is 131072" in p["detail"]


def test_body_over_8_mib_refused(shared: Network, tenants: Tenants) -> None:
    body = json.dumps({"command": ["echo", "x" * (9 * MIB)]}).encode()
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(
            c.post("/v1/jobs", content=body, headers={"content-type": "application/json"}), 413
        )
    assert str(8 * MIB) in p["detail"]


def test_chunked_body_over_8_mib_refused(shared: Network, tenants: Tenants) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"command": ["echo", "'
        for _ in range(9 * 16):
            yield b"x" * (64 * 1024)
        yield b'"]}'

    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        problem(
            c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"}),
            413,
        )


def test_chunked_body_over_limit_never_accepted(shared: Network, tenants: Tenants) -> None:
    """Whatever the status, an oversized streamed body is a client error and writes nothing."""

    def chunks() -> Iterator[bytes]:
        yield b'{"command": ["echo", "'
        for _ in range(9 * 16):
            yield b"x" * (64 * 1024)
        yield b'"]}'

    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        resp = c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert 400 <= resp.status_code < 500
        problem(resp, resp.status_code)


@pytest.mark.parametrize("raw", [b"{not json", b'{"command": ["true"]', b"", b"\xff\xfe"])
def test_invalid_json_refused(shared: Network, tenants: Tenants, raw: bytes) -> None:
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        resp = c.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
        p = problem(resp, 422)
    assert p["errors"], p
    if raw:
        assert "JSON" in p["detail"]


# --- authentication ---------------------------------------------------------------------------


def test_missing_token(shared: Network, tenants: Tenants) -> None:
    with nothing_written(shared, tenants), http(shared) as c:
        for resp in (c.get("/v1/jobs"), c.post("/v1/jobs", json={"command": ["true"]})):
            p = problem(resp, 401)
            assert resp.headers["www-authenticate"] == "Bearer"
            assert "missing bearer token" in p["detail"]


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("Bearer garbage", "malformed token"),
        ("Bearer cnet_", "malformed token"),
        ("Bearer cnet_abc.", "malformed token"),
        ("Bearer cnet_" + "a" * 300 + ".x", "malformed token"),
        ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
        ("Bearer", "must be 'Bearer <token>'"),
        ("cnet_abc.def", "must be 'Bearer <token>'"),
    ],
)
def test_malformed_token(shared: Network, tenants: Tenants, header: str, why: str) -> None:
    with nothing_written(shared, tenants), http(shared) as c:
        resp = c.post("/v1/jobs", json={"command": ["true"]}, headers={"authorization": header})
        p = problem(resp, 401)
    assert resp.headers["www-authenticate"] == "Bearer"
    assert why in p["detail"]


def test_wrong_token(shared: Network, tenants: Tenants) -> None:
    token_id = shared.token.removeprefix("cnet_").split(".")[0]
    for wrong in ("cnet_000000000000.nosuchsecret", f"cnet_{token_id}.wrongsecret"):
        with nothing_written(shared, tenants), http(shared, wrong) as c:
            resp = c.post("/v1/jobs", json={"command": ["true"]})
            p = problem(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer"
        assert p["detail"] == "unknown token"


# --- agent heartbeats --------------------------------------------------------------------------


def heartbeat_body(seq: int, sent_at: float | None = None) -> bytes:
    now = time.time()
    hb = Heartbeat(
        seq=seq,
        sent_at=now if sent_at is None else sent_at,
        sample=TelemetrySample(
            time=now, cpu_percent=0, load_1m=0, memory_used_bytes=0, memory_total_bytes=1
        ),
    )
    return hb.model_dump_json().encode()


def post_heartbeat(
    shared: Network,
    pool: str,
    body: bytes,
    key: KeyPair | None,
    signed_pool: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, dict[str, str]]:
    path = f"/v1/pools/{pool}/heartbeat"
    if headers is None:
        headers = {} if key is None else signed.sign(key, signed_pool or pool, "POST", path, body)
    with http(shared) as c:
        resp = c.post(path, content=body, headers={**headers, "content-type": "application/json"})
    return resp, headers


def now_seq() -> int:
    return time.time_ns() // 1_000_000  # the agent's own scheme: milliseconds, always growing


def test_unsigned_heartbeat(shared: Network, pool_cpi: str) -> None:
    resp, _ = post_heartbeat(shared, pool_cpi, heartbeat_body(now_seq()), key=None)
    p = problem(resp, 401)
    assert "unsigned request" in p["detail"]


def test_heartbeat_with_bearer_token_only(shared: Network, pool_cpi: str) -> None:
    """An admin token is not a pool signature."""
    path = f"/v1/pools/{pool_cpi}/heartbeat"
    with http(shared, shared.token) as c:
        resp = c.post(path, content=heartbeat_body(now_seq()))
    assert "unsigned request" in problem(resp, 401)["detail"]


def test_heartbeat_signed_by_another_key(shared: Network, pool_cpi: str) -> None:
    resp, _ = post_heartbeat(shared, pool_cpi, heartbeat_body(now_seq()), KeyPair.generate())
    p = problem(resp, 401)
    assert "bad pool signature" in p["detail"]


def test_heartbeat_signed_for_another_pool(
    shared: Network, pool_cpi: str, pool_key: KeyPair
) -> None:
    other = pool_cpi + "x"
    resp, _ = post_heartbeat(shared, pool_cpi, heartbeat_body(now_seq()), pool_key, other)
    p = problem(resp, 401)
    assert fields(p) == ["pool"]


def test_heartbeat_for_unknown_pool(shared: Network, pool_cpi: str) -> None:
    unknown = pool_cpi.rsplit("/", 1)[0] + "/nosuchpool"
    resp, _ = post_heartbeat(shared, unknown, heartbeat_body(now_seq()), KeyPair.generate())
    p = problem(resp, 401)
    assert fields(p) == ["pool"]
    assert unknown in p["detail"]


def test_heartbeat_with_tampered_body(shared: Network, pool_cpi: str, pool_key: KeyPair) -> None:
    path = f"/v1/pools/{pool_cpi}/heartbeat"
    headers = signed.sign(pool_key, pool_cpi, "POST", path, heartbeat_body(now_seq()))
    other = heartbeat_body(now_seq() + 1)
    resp, _ = post_heartbeat(shared, pool_cpi, other, None, headers=headers)
    assert "bad pool signature" in problem(resp, 401)["detail"]


def test_heartbeat_with_stale_sent_at(shared: Network, pool_cpi: str, pool_key: KeyPair) -> None:
    body = heartbeat_body(now_seq(), sent_at=time.time() - 3600)
    resp, _ = post_heartbeat(shared, pool_cpi, body, pool_key)
    assert fields(problem(resp, 401)) == ["sent_at"]


def test_signed_heartbeat_then_replay(shared: Network, pool_cpi: str, pool_key: KeyPair) -> None:
    # The real agent heartbeats every second with millisecond seqs; if it wins a race, retry.
    for _ in range(5):
        body = heartbeat_body(now_seq())
        resp, headers = post_heartbeat(shared, pool_cpi, body, pool_key)
        if resp.status_code != 409:
            break
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"stop": []}  # nothing of this pool was taken away

    replay, _ = post_heartbeat(shared, pool_cpi, body, None, headers=headers)
    p = problem(replay, 409)
    assert fields(p) == ["seq"]
    assert "replayed" in p["detail"]


def test_signed_numbers_past_a_database_integer_are_refused(
    shared: Network, pool_cpi: str, pool_key: KeyPair
) -> None:
    """Signed by the pool's own key and still refused: a seq of 2**63 was taken, and then
    every pool's heartbeats failed to save and liveness stopped for the whole node."""
    seq = now_seq()
    body = heartbeat_body(seq).replace(f'"seq":{seq}'.encode(), f'"seq":{2**63}'.encode())
    resp, _ = post_heartbeat(shared, pool_cpi, body, pool_key)
    assert fields(problem(resp, 422)) == ["seq"]
    job = "j-" + "0" * 12
    ref = {"job_id": job, "attempt": 1}
    log = {**ref, "stream": "stdout", "offset": 2**63, "data": "x"}
    report = {**ref, "state": "RUNNING", "at": time.time(), "exit_code": 2**63}
    path = f"/v1/pools/{pool_cpi}/reports"
    for batch, field in (
        ({"logs": [log]}, "logs.0.offset"),
        ({"reports": [report]}, "reports.0.exit_code"),
        (
            {
                "reports": [
                    {**report, "exit_code": 0, "usage": {"wall_seconds": 1, "max_rss_bytes": 2**63}}
                ]
            },
            "reports.0.usage.max_rss_bytes",
        ),
    ):
        raw = json.dumps(batch).encode()
        headers = signed.sign(pool_key, pool_cpi, "POST", path, raw)
        with http(shared) as c:
            resp = c.post(
                path, content=raw, headers={**headers, "content-type": "application/json"}
            )
        assert fields(problem(resp, 422)) == [field], resp.text


def test_an_agents_output_that_is_not_text_does_not_block_its_reports(
    shared: Network, pool_cpi: str, pool_key: KeyPair
) -> None:
    """An agent of an earlier release sends a job's NUL as it is: refusing the batch held
    back every report after it, for good. The batch is taken; each item answers alone."""
    ref = {"job_id": "j-" + "0" * 12, "attempt": 1}
    log = {**ref, "stream": "stdout", "offset": 0, "data": "a\u0000b"}
    raw = json.dumps({"logs": [log]}).encode()
    path = f"/v1/pools/{pool_cpi}/reports"
    headers = signed.sign(pool_key, pool_cpi, "POST", path, raw)
    with http(shared) as c:
        resp = c.post(path, content=raw, headers={**headers, "content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 0 and len(resp.json()["refused"]) == 1


def test_real_agent_unharmed_by_forged_heartbeats(shared: Network, pool_cpi: str) -> None:
    """After all of the above the pool still heartbeats and stays online."""
    with shared.client() as c:
        first = next(p for p in c.pools() if p.cpi == pool_cpi).last_heartbeat_at
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pool = next(p for p in c.pools() if p.cpi == pool_cpi)
            if pool.last_heartbeat_at != first:
                break
            time.sleep(0.2)
    assert pool.status.value == "online"
    assert pool.last_heartbeat_at is not None and first is not None
    assert pool.last_heartbeat_at > first


# --- tenants ----------------------------------------------------------------------------------


def test_other_tenants_job_is_invisible(shared: Network, tenants: Tenants) -> None:
    with http(shared, tenants.a) as a:
        resp = a.post("/v1/jobs", json={"command": ["true"], "name": "secret-of-a"})
        assert resp.status_code == 201, resp.text
        job_id = resp.json()["id"]
        assert resp.json()["tenant"] == "tenant-a"

    with http(shared, tenants.b) as b:
        for resp in (
            b.get(f"/v1/jobs/{job_id}"),
            b.post(f"/v1/jobs/{job_id}/cancel"),
            b.get(f"/v1/jobs/{job_id}/logs"),
            b.get(f"/v1/jobs/{job_id}/logs", params={"follow": "true"}),
        ):
            p = problem(resp, 404)
            assert job_id in p["detail"]
            assert "tenant-a" not in resp.text and "secret-of-a" not in resp.text
        for params in ({}, {"name": "secret-of-a"}):
            listed = b.get("/v1/jobs", params=params)
            assert listed.status_code == 200
            assert job_id not in {j["id"] for j in listed.json()["items"]}
        assert fields(problem(b.get("/v1/jobs", params={"all": "true"}), 403)) == ["all"]
        assert b.get("/v1/jobs/counts").json() == {}

    with http(shared, tenants.a) as a:
        mine = a.get(f"/v1/jobs/{job_id}")
        assert mine.status_code == 200
        assert mine.json()["cancel_requested"] is False
        assert mine.json()["state"] != "CANCELED"
        assert job_id in {j["id"] for j in a.get("/v1/jobs").json()["items"]}
        assert sum(a.get("/v1/jobs/counts").json().values()) == 1

    with http(shared, shared.token) as admin:
        everyone = admin.get("/v1/jobs", params={"all": "true", "limit": 1000}).json()["items"]
        assert job_id in {j["id"] for j in everyone}


def test_job_larger_than_every_pool(shared: Network, tenants: Tenants, pool_cpi: str) -> None:
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(
            c.post("/v1/jobs", json={"command": ["true"], "resources": {"cpus": 4000}}), 409
        )
    assert fields(p) == ["resources"]
    assert pool_cpi in p["detail"]
    assert "needs 4000 CPUs" in p["detail"]


def test_job_needing_more_memory_than_every_pool(
    shared: Network, tenants: Tenants, pool_cpi: str
) -> None:
    body = {"command": ["true"], "resources": {"memory": "1000T"}}
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(c.post("/v1/jobs", json=body), 409)
    assert fields(p) == ["resources"]
    assert pool_cpi in p["detail"]
    assert "memory" in p["detail"]


def test_vendors_without_accelerators_are_refused(shared: Network, tenants: Tenants) -> None:
    """Before, ``--vendor nvidia`` alone ran the job on CPUs, the vendor silently ignored."""
    body = {"command": ["true"], "resources": {"vendor": ["nvidia"]}}
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        for path in ("/v1/jobs", "/v1/jobs/plan"):
            p = problem(c.post(path, json=body), 422)
            assert fields(p) == ["resources.vendor"] and "gpus" in p["detail"]
        p = problem(c.post("/v1/jobs/batch", json={"jobs": [{"command": ["true"]}, body]}), 422)
        assert fields(p) == ["jobs.1.resources.vendor"]
        proc = shared.cnet("run", "--vendor", "nvidia", "--", "true", token=tenants.rejected)
        typo = {"command": ["true"], "resources": {"gpus": 1, "vendor": ["amdd"]}}
        p = problem(c.post("/v1/jobs", json=typo), 422)  # was a 409: "has 0 amdd device(s)"
        assert fields(p) == ["resources.vendor"] and "no vendor 'amdd'" in p["detail"]
        assert "nvidia" in p["detail"]  # the vendors there are
    assert_one_line_error(proc, "resources.vendor", "gpus")


def test_job_pinned_to_unknown_pool(shared: Network, tenants: Tenants, pool_cpi: str) -> None:
    unknown = pool_cpi.rsplit("/", 1)[0] + "/nosuchpool"
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(c.post("/v1/jobs", json={"command": ["true"], "pool": unknown}), 409)
    assert fields(p) == ["pool"]
    assert unknown in p["detail"]


def test_job_reading_or_writing_an_unknown_pool_is_refused_at_submission(
    shared: Network, tenants: Tenants, pool_cpi: str
) -> None:
    """Otherwise it queues for its turn and fails only at staging."""
    unknown = pool_cpi.rsplit("/", 1)[0] + "/nosuchpool"
    known = f"{pool_cpi}:/home/rejected/in.txt"
    ok = {"command": ["true"], "inputs": [{"uri": known, "path": "in.txt"}]}
    bad_in = {"command": ["true"], "inputs": [{"uri": f"{unknown}:/home/x", "path": "x"}]}
    bad_out = {"command": ["true"], "outputs": [{"path": "o", "uri": f"{unknown}:/home/o"}]}
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(c.post("/v1/jobs", json=bad_in), 422)
        assert fields(p) == ["inputs.0.uri"]
        assert f"no pool '{unknown}' on this node" in p["detail"], p
        p = problem(c.post("/v1/jobs/batch", json={"jobs": [ok, bad_out]}), 422)
        assert fields(p) == ["jobs.1.outputs.0.uri"]
        p = problem(c.post("/v1/jobs/plan", json=bad_in), 422)
        assert fields(p) == ["inputs.0.uri"]


# Raw JSON: a lone surrogate cannot be sent as a Python str through httpx's encoder.
NOT_TEXT = [
    ("surrogate-label", r'{"command": ["true"], "labels": {"k": "\udfff"}}', "labels.k"),
    ("surrogate-key", r'{"command": ["true"], "labels": {"\ud800": "v"}}', "labels.\\ud800"),
    ("nul-name", r'{"command": ["true"], "name": "a\u0000b"}', "name"),
    ("nul-label", r'{"command": ["true"], "labels": {"k": "a\u0000"}}', "labels.k"),
    (
        "surrogate-deep",
        r'{"command": ["true"], "inputs": [{"path": "\udc00", "uri": "x"}]}',
        "inputs.0.path",
    ),
]


@pytest.mark.parametrize(("raw", "field"), [c[1:] for c in NOT_TEXT], ids=[c[0] for c in NOT_TEXT])
def test_strings_that_are_not_text_are_refused(
    shared: Network, tenants: Tenants, raw: str, field: str
) -> None:
    """Stored, such a string failed every later read of the job: its tenant's listings and
    the pool's directives answered 500, and the pool took no more work."""
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        resp = c.post(
            "/v1/jobs", content=raw.encode(), headers={"content-type": "application/json"}
        )
        p = problem(resp, 422)
    assert fields(p) == [field], p
    assert "lone surrogate" in p["detail"] or "NUL" in p["detail"]


def test_text_checks_hold_whatever_the_media_types_case_and_in_the_url(
    shared: Network, tenants: Tenants
) -> None:
    raw = b'{"command": ["true"], "labels": {"k": "x\\u0000y"}}'
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        resp = c.post("/v1/jobs", content=raw, headers={"content-type": "Application/JSON"})
        assert fields(problem(resp, 422)) == ["labels.k"]
        assert fields(problem(c.get("/v1/jobs", params={"name": "a\x00b"}), 422)) == ["name"]


def test_a_body_that_is_not_json_is_refused_by_its_media_type(
    shared: Network, tenants: Tenants
) -> None:
    raw = b'{"command": ["true"]}'
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        for kind in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
            p = problem(c.post("/v1/jobs", content=raw, headers={"content-type": kind}), 415)
            assert fields(p) == ["content-type"] and kind in p["detail"]
        for kind in ("application/json; charset=utf-8", "application/merge-patch+json"):
            resp = c.post("/v1/jobs/plan", content=raw, headers={"content-type": kind})
            assert resp.status_code == 200, resp.text


BAD_LABELS = [
    ("rtl-override-key", {"\u202eevil": "x"}, "labels.\u202eevil.[key]"),
    ("newline-key", {"a\nb": "x"}, "labels.a\nb.[key]"),
    ("empty-key", {"": "x"}, "labels..[key]"),
    ("long-key", {"k" * 257: "x"}, "labels." + "k" * 257 + ".[key]"),
    ("long-value", {"k": "v" * 4097}, "labels.k"),
    ("too-many", {f"k{i}": "v" for i in range(65)}, "labels"),
]


@pytest.mark.parametrize(
    ("labels", "field"), [c[1:] for c in BAD_LABELS], ids=[c[0] for c in BAD_LABELS]
)
def test_labels_are_bounded_and_plain(
    shared: Network, tenants: Tenants, labels: dict[str, str], field: str
) -> None:
    """Labels travel with every listing and every assignment: a 7 MB label made each page
    of jobs 7 MB, and a key with a control character reads as something else."""
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        p = problem(c.post("/v1/jobs", json={"command": ["true"], "labels": labels}), 422)
    assert fields(p) == [field], p


HUGE = "1" + "0" * 309  # a float reads it as infinity


def test_sizes_past_infinity_are_refused_by_name(shared: Network, tenants: Tenants) -> None:
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        for memory in (f'"{HUGE}"', f'"{HUGE}T"', "1e400", "Infinity", "NaN"):
            raw = f'{{"command": ["true"], "resources": {{"memory": {memory}}}}}'.encode()
            for route in ("/v1/jobs", "/v1/jobs/plan"):
                resp = c.post(route, content=raw, headers={"content-type": "application/json"})
                assert fields(problem(resp, 422)) == ["resources.memory"], memory
        p = problem(c.get("/v1/discover", params={"q": f"mem>={HUGE}"}), 422)
        assert fields(p) == ["q"], p
    with http(shared, shared.token) as admin:
        p = problem(admin.put("/v1/tenants/tenant-a", json={"max_data": HUGE}), 422)
        assert fields(p) == ["max_data"], p


def test_bodies_past_what_json_reads_name_the_body(shared: Network, tenants: Tenants) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    digits = b'{"command": ["true"], "priority": 1' + b"0" * 5000 + b"}"
    with nothing_written(shared, tenants), http(shared, tenants.rejected) as c:
        for raw in (deep, digits):
            resp = c.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
            assert fields(problem(resp, 422)) == ["body"]


def test_a_plan_refuses_what_submission_refuses_for_reach(
    shared: Network, tenants: Tenants, pool_cpi: str
) -> None:
    """A plan answers as submission would: another tenant's home is not read, even to
    price a job."""
    spec = {"command": ["true"], "inputs": [{"path": "x", "uri": f"{pool_cpi}:/home/tenant-a/x"}]}
    with http(shared, tenants.b) as c:
        for route in ("/v1/jobs", "/v1/jobs/plan"):
            p = problem(c.post(route, json=spec), 403)
            assert fields(p) == ["inputs.0.uri"], p


def test_output_that_is_not_text_comes_back_marked(shared: Network, tenants: Tenants) -> None:
    """A job that prints NUL and bytes that are not UTF-8 finishes with its log: each shows
    as U+FFFD. PostgreSQL holds no NUL, and the pool's reports were refused whole."""
    with shared.client(tenants.a) as c:
        job = c.submit(command=["printf", "a\\000b\\377c\\n"])
        done = c.wait(job.id, timeout=60)
        out = "".join(x["data"] for x in c.logs(job.id))
    assert done.state.value == "COMPLETE", done.reason
    assert out == "a\ufffdb\ufffdc\n"


def test_a_tenants_blob_is_not_anothers(shared: Network, tenants: Tenants) -> None:
    """A blob is stored by its hash, which anyone can compute from content they guess: the
    hash alone let every tenant read every other's."""
    body = b"tenant-a's private payload"
    octets = {"content-type": "application/octet-stream"}
    with http(shared, tenants.a) as a:
        made = a.put("/v1/blobs", content=body, headers=octets)
        assert made.status_code == 201, made.text
        blob = made.json()["id"]
        assert a.get(f"/v1/blobs/{blob}").content == body
    with http(shared, tenants.b) as b:
        assert fields(problem(b.get(f"/v1/blobs/{blob}"), 404)) == ["blob"]


def test_a_malformed_cpi_to_resolve_is_invalid(shared: Network, tenants: Tenants) -> None:
    with http(shared, tenants.a) as c:
        p = problem(c.get("/v1/resolve/not-a-cpi"), 422)
    assert fields(p) == ["cpi"]


@pytest.mark.parametrize("job_id", ["BAD", "j-UPPER", "j-" + "a" * 41, "x-abc"])
def test_malformed_job_id(shared: Network, tenants: Tenants, job_id: str) -> None:
    with http(shared, tenants.a) as c:
        p = problem(c.get(f"/v1/jobs/{job_id}"), 422)
    assert fields(p) == ["job_id"]


# --- the CLI ---------------------------------------------------------------------------------


def assert_one_line_error(proc: Any, *words: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_run_negative_cpus(shared: Network, tenants: Tenants) -> None:
    with nothing_written(shared, tenants):
        proc = shared.cnet("run", "--cpus", "-1", "--", "true", token=tenants.rejected)
    assert_one_line_error(proc, "cpus")


def test_cli_run_bad_memory_unit(shared: Network, tenants: Tenants) -> None:
    with nothing_written(shared, tenants):
        proc = shared.cnet("run", "--mem", "5Q", "--", "true", token=tenants.rejected)
    assert_one_line_error(proc, "memory", "5Q")


def test_cli_submit_unknown_field(shared: Network, tenants: Tenants, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("command: [echo, hi]\nresources:\n  cpus: 1\n  gpu: 1\n")
    with nothing_written(shared, tenants):
        proc = shared.cnet("submit", str(spec), token=tenants.rejected)
    assert_one_line_error(proc, "resources.gpu", "unknown field", str(spec))


def test_cli_submit_not_yaml(shared: Network, tenants: Tenants, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("command: [echo, hi\n")
    with nothing_written(shared, tenants):
        proc = shared.cnet("submit", str(spec), token=tenants.rejected)
    assert_one_line_error(proc, "not valid YAML")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('command: ["true"]\ncommand: ["false"]\n', "duplicate key 'command'"),  # ran false
        ('command: ["true"]\nresources: {time: 1:00:00:00}\n', "invalid duration"),  # was 60 h
        ('command: ["true"]\nresources: {time: 99:99:99}\n', "minutes and seconds"),
    ],
    ids=["duplicate-key", "base-60-time", "minutes-past-59"],
)
def test_cli_submit_reads_yaml_as_written(
    shared: Network, tenants: Tenants, tmp_path: Path, text: str, says: str
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(text)
    with nothing_written(shared, tenants):
        proc = shared.cnet("submit", str(spec), token=tenants.rejected)
    assert_one_line_error(proc, says)


def test_cli_submit_binary_file(shared: Network, tenants: Tenants, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_bytes(b"\xff\xfe\x00command")
    with nothing_written(shared, tenants):
        proc = shared.cnet("submit", str(spec), token=tenants.rejected)
    assert_one_line_error(proc, "not UTF-8 text")


def test_cli_submit_refused_by_node(shared: Network, tenants: Tenants, pool_cpi: str) -> None:
    """Valid locally, refused by the node (409): still one line, naming the pool."""
    with nothing_written(shared, tenants):
        proc = shared.cnet("run", "--cpus", "4000", "--", "true", token=tenants.rejected)
    assert_one_line_error(proc, pool_cpi)


def test_cli_wrong_token(shared: Network, tenants: Tenants) -> None:
    with nothing_written(shared, tenants):
        proc = shared.cnet("run", "--", "true", token="cnet_000000000000.nosuchsecret")
    assert_one_line_error(proc, "unknown token")


def test_rejected_tenant_has_no_jobs(shared: Network, tenants: Tenants) -> None:
    """The end of the module: every submission above as 'rejected' was refused whole."""
    assert total_jobs(shared, tenants.rejected) == 0
    with shared.client(tenants.rejected) as c:
        assert c.list().items == []
        assert c.counts() == {}


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"sync": "bogus"}, "sync must be one of none, exists, size, mtime, checksum"),
        ({"streams": 0}, "streams must be a whole number from 1 to 64"),
        ({"streams": True}, "streams must be a whole number"),
        ({"deadline": -1}, "deadline must be a number of seconds above 0"),
        ({"sinc": "size"}, "unknown options: sinc"),
    ],
)
def test_sdk_copy_options_are_checked_before_any_request(
    shared: Network, tmp_path: Path, options: dict[str, Any], says: str
) -> None:
    src = tmp_path / "f.txt"
    src.write_text("x")
    with shared.client() as c, pytest.raises((ValueError, TypeError), match=says):
        c.copy(str(src), "cpi:cn:bogus.pool:/f.txt", **options)
