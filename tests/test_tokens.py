"""API tokens through the CLI and the SDK: create, use, list, revoke, and who may do it."""

from __future__ import annotations

import re
import stat
import subprocess
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from computenet.model import Role
from computenet.sdk.client import ApiError

if TYPE_CHECKING:
    from conftest import Network

CREATED = re.compile(r"^token ([0-9a-f]+) for tenant (\S+) \((\w+)\); the secret is shown once:$")
REVOCATION_DEADLINE = 3.0  # the node caches tokens for about 2 s


def cli_create(shared: Network, *args: str) -> tuple[str, str]:
    """``cnet token create ...`` as the admin; returns (id, secret)."""
    proc = shared.cnet("token", "create", *args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    m = CREATED.match(lines[0])
    assert m, lines[0]
    secret = lines[1]
    assert secret.startswith(f"cnet_{m.group(1)}.")
    return m.group(1), secret


def status_with(shared: Network, token: str) -> httpx.Response:
    return httpx.get(
        f"{shared.url}/v1/jobs", headers={"authorization": f"Bearer {token}"}, timeout=10
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_created_token_works(shared: Network) -> None:
    token_id, secret = cli_create(shared, "ci-bot", "--tenant", "team-x")
    with shared.client(secret) as c:
        assert c.counts() == {}
        job = c.run(["true"])
    assert job.tenant == "team-x"
    with shared.client() as admin:
        (t,) = [t for t in admin.tokens() if t.id == token_id]
    assert (t.name, t.tenant, t.role) == ("ci-bot", "team-x", Role.tenant)
    assert t.last_used_at is None or t.last_used_at >= t.created_at
    # the CLI uses it too
    proc = shared.cnet("ps", token=secret)
    assert proc.returncode == 0, proc.stderr
    assert job.id in proc.stdout


def test_cli_create_defaults_tenant_to_name(shared: Network) -> None:
    proc = shared.cnet("token", "create", "solo")
    assert proc.returncode == 0, proc.stderr
    m = CREATED.match(proc.stdout.splitlines()[0])
    assert m and m.group(2) == "solo" and m.group(3) == "tenant"


def test_cli_create_provider_role(shared: Network) -> None:
    token_id, _ = cli_create(shared, "rack-1", "--role", "provider")
    with shared.client() as admin:
        (t,) = [t for t in admin.tokens() if t.id == token_id]
    assert t.role is Role.provider


def test_cli_token_list_shows_it(shared: Network) -> None:
    token_id, secret = cli_create(shared, "lister", "--tenant", "team-list")
    proc = shared.cnet("token", "list")
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header == ["ID", "NAME", "TENANT", "ROLE", "CREATED", "REVOKED"]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert rows[token_id][1:4] == ["lister", "team-list", "tenant"]
    assert rows[token_id][-1] == "-"  # not revoked
    # the secret is shown once, at creation, and never listed
    assert secret.split(".", 1)[1] not in proc.stdout


def test_cli_revoke_makes_token_fail(shared: Network) -> None:
    token_id, secret = cli_create(shared, "short-lived", "--tenant", "team-r")
    assert status_with(shared, secret).status_code == 200  # now cached by the node

    proc = shared.cnet("token", "revoke", token_id)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"revoked {token_id} (short-lived)"

    deadline = time.monotonic() + REVOCATION_DEADLINE
    while True:
        resp = status_with(shared, secret)
        if resp.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["detail"] == "token revoked"
    assert resp.headers["www-authenticate"] == "Bearer"

    one_line_error(shared.cnet("ps", token=secret), "token revoked")

    listed = shared.cnet("token", "list")
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(token_id))
    assert row[-1] != "-"  # REVOKED column filled in
    with shared.client() as admin:
        (t,) = [t for t in admin.tokens() if t.id == token_id]
        assert t.revoked_at is not None
        assert admin.counts() is not None  # the admin token is untouched
    again = shared.cnet("token", "revoke", token_id)
    assert again.returncode == 0 and "was revoked already" in again.stdout


def test_cli_revokes_a_token_by_its_name(shared: Network) -> None:
    """Before, a name got 'token_id: String should match pattern ...'."""
    token_id, _ = cli_create(shared, "by-name", "--tenant", "team-n")
    proc = shared.cnet("token", "revoke", "by-name")
    assert proc.returncode == 0 and proc.stdout.strip() == f"revoked {token_id} (by-name)"
    gone = shared.cnet("token", "revoke", "by-name")  # no live one is named so now
    assert gone.returncode == 2 and "no live token is named so" in gone.stderr
    cli_create(shared, "twin", "--tenant", "team-t")
    second = shared.cnet("token", "create", "twin", "--tenant", "team-t")
    assert second.returncode == 0 and "2 live tokens are named twin" in second.stderr
    both = shared.cnet("token", "revoke", "twin")
    assert both.returncode == 2 and "2 are named so: give its id" in both.stderr


def test_revoke_is_idempotent_and_unknown_is_404(shared: Network) -> None:
    with shared.client() as admin:
        t = admin.create_token("twice", "team-twice")
        first = admin.revoke_token(t.id)
        again = admin.revoke_token(t.id)
        assert first.revoked_at is not None
        assert again.revoked_at == first.revoked_at
        with pytest.raises(ApiError) as exc:
            admin.revoke_token("0123456789ab")
        assert exc.value.status == 404
    one_line_error(shared.cnet("token", "revoke", "0123456789ab"), "0123456789ab")


@pytest.mark.parametrize("args", [["Bad Name"], ["ok", "--tenant", "Not OK"]])
def test_cli_create_bad_name(shared: Network, args: list[str]) -> None:
    said = "NAME: 'Bad Name'" if len(args) == 1 else "--tenant: 'Not OK'"  # as typed
    one_line_error(shared.cnet("token", "create", *args), said)


def test_a_local_tenant_cannot_take_a_far_nodes_tenant_name(shared: Network) -> None:
    """A job forwarded from node ``east`` for its tenant alice acts here as ``alice.east``:
    a local tenant of that name would share its jobs, home and quota."""
    one_line_error(shared.cnet("token", "create", "bot", "--tenant", "alice.east"), "tenant", "dot")
    one_line_error(shared.cnet("token", "create", "alice.east"), "tenant", "dot")
    token_id, _ = cli_create(shared, "ci.bot", "--tenant", "team-ci")
    with shared.client() as admin:
        (t,) = [t for t in admin.tokens() if t.id == token_id]
        assert t.tenant == "team-ci"
        assert not any(t.tenant == "alice.east" for t in admin.tokens())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "ok", "tenant": "Not OK"}, "tenant"),
        ({"name": "ok", "tenant": "alice.east"}, "tenant"),
        ({"name": "alice.east"}, "tenant"),
        ({"name": "ok", "role": "root"}, "role"),
        ({"name": "ok", "secret": "chosen"}, "secret"),
    ],
)
def test_api_create_bad_request(shared: Network, body: dict[str, str], field: str) -> None:
    with shared.client() as admin:
        before = len(admin.tokens())
    resp = httpx.post(
        f"{shared.url}/v1/tokens", json=body, headers={"authorization": f"Bearer {shared.token}"}
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in resp.json()["errors"]] == [field]
    with shared.client() as admin:
        assert len(admin.tokens()) == before


def test_sdk_token_roundtrip(shared: Network) -> None:
    with shared.client() as admin:
        t = admin.create_token("sdk-user", "team-sdk")
        assert t.role is Role.tenant
        assert t.tenant == "team-sdk"
        assert t.revoked_at is None
        listed = {x.id: x for x in admin.tokens()}
        assert listed[t.id].name == "sdk-user"
        raw = httpx.get(
            f"{shared.url}/v1/tokens", headers={"authorization": f"Bearer {shared.token}"}
        )
        assert raw.status_code == 200
        assert t.secret not in raw.text
        assert t.secret.split(".", 1)[1] not in raw.text
        assert "secret" not in raw.text
    with shared.client(t.secret) as c:
        assert c.list().items == []


@pytest.mark.parametrize("role", [Role.tenant, Role.provider])
def test_non_admin_cannot_manage_tokens(shared: Network, role: Role) -> None:
    with shared.client() as admin:
        mine = admin.create_token(f"limited-{role.value}", f"team-{role.value}", role)
        victim = admin.create_token(f"victim-{role.value}", "team-victim")
    with shared.client(mine.secret) as c:
        for call in (
            lambda: c.create_token("escalate", "anyone"),
            lambda: c.create_token("root", "admin", Role.admin),
            lambda: c.tokens(),
            lambda: c.revoke_token(victim.id),
        ):
            with pytest.raises(ApiError) as exc:
                call()
            assert exc.value.status == 403
            assert "admin role" in exc.value.problem.detail
    # nothing changed: no new token, the victim still works
    with shared.client() as admin:
        names = {t.name for t in admin.tokens()}
        assert "escalate" not in names and "root" not in names
    assert status_with(shared, victim.secret).status_code == 200

    proc = shared.cnet("token", "create", "escalate", token=mine.secret)
    one_line_error(proc, "admin role")
    one_line_error(shared.cnet("token", "list", token=mine.secret), "admin role")


def test_admin_token_file_is_private(shared: Network) -> None:
    path = shared.home / "config" / "credentials.json"
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_suffix(".tmp").exists()
    node_dir = shared.home / "data" / "node"  # on PostgreSQL too, where no database is in it
    assert stat.S_IMODE(node_dir.stat().st_mode) == 0o700
    # and what it holds is the working admin token for this node
    with shared.client(shared.token) as admin:
        assert any(t.role is Role.admin for t in admin.tokens())


def test_the_last_admin_token_cannot_be_revoked(network: Network) -> None:
    """Revoking it left a node nobody could administer: a restart makes no new token while
    any exists. Once another admin token exists, the first may go."""
    with network.client() as admin:
        (first,) = [t for t in admin.tokens() if t.role is Role.admin]
        with pytest.raises(ApiError) as exc:
            admin.revoke_token(first.id)
        assert exc.value.status == 409
        assert exc.value.problem.errors[0].field == "token_id"
        assert "last admin token" in exc.value.problem.detail
        one_line_error(network.cnet("token", "revoke", first.id), "last admin token")
        assert admin.counts() is not None  # still usable
        spare = admin.create_token("spare", role=Role.admin)
    with network.client(spare.secret) as other:
        assert other.revoke_token(first.id).revoked_at is not None
        with pytest.raises(ApiError) as exc:
            other.revoke_token(spare.id)
        assert exc.value.status == 409


def test_values_refused_before_sending_are_named_as_their_options(shared: Network) -> None:
    """They were named as the fields they fill (``weight: …``), or by no form at all."""
    for args, says in (
        (("tenant", "set", "bob", "--weight", "-1"), "--weight: "),
        (("token", "create", "x", "--tenant", "A"), "--tenant: 'A' is not in the allowed form: 1"),
        (("node", "invite", "East"), "'East' is not in the allowed form: 1 to 32 of a-z"),
    ):
        r = shared.cnet(*args)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.heavy  # an agent of its own, stopped, and its pool judged
def test_revoking_a_providers_token_cuts_its_pool_off(shared: Network) -> None:
    """Before, the agent went on serving: its pool stayed online and took jobs, signed by
    a key its revoked token had registered."""
    token_id, secret = cli_create(shared, "acme-agent", "--tenant", "acme", "--role", "provider")
    agent = shared.start_agent("acme-pool", "--token", secret, "--provider", "acme")
    pool = shared.wait_pool("acme-pool")
    assert shared.cnet("token", "revoke", token_id).returncode == 0
    assert agent.popen is not None
    assert agent.popen.wait(60) == 1  # refused at its next request, and again at register
    assert "revoked" in agent.output()
    with shared.client() as c:
        deadline = time.monotonic() + 40
        while c.pool(pool).status.value == "online" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.pool(pool).status.value != "online"  # no heartbeat reaches it now
