"""Four nodes in a hierarchy, each a process with an agent of its own: root ``cn``, regional
``cn.east`` and ``cn.west``, industry ``cn.east.fin``. Every CPI resolves from every node;
summaries build the tree's view; forgeries are refused; a regional node that dies drops out
of the root's view and comes back with the same CPIs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from computenet.agent.identity import Identity
from computenet.agent.link import NodeLink
from computenet.ident import requests as signed
from computenet.ident.delegation import ChainError, issue, verify_chain, verify_record
from computenet.ident.keys import KeyPair
from computenet.model import JobState, Machine, PoolInventory, ProviderRegistration, Role
from computenet.model.federation import Delegation, Record, Summary
from computenet.node.store import tokens as token_store
from computenet.sdk import ApiError
from conftest import Network, procs_with

pytestmark = pytest.mark.slow

# name: (code, parent name)
NODES = {
    "root": ("cn", None),
    "east": ("cn.east", "root"),
    "west": ("cn.west", "root"),
    "fin": ("cn.east.fin", "east"),
}
TIMEOUT = 4.0  # summary timeout given to every node


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Network]]:
    tmp = tmp_path_factory.mktemp("tree")
    nets: dict[str, Network] = {}
    try:
        for name, (code, parent) in NODES.items():
            net = Network(tmp / name, f"sqlite:///{tmp}/{name}.db")
            net.overrides.update(CNET_SUMMARY_EVERY="0.5", CNET_SUMMARY_TIMEOUT=str(TIMEOUT))
            if parent is None:
                r = net.cnet("node", "init", "--root", "--code", code, "--url", net.url)
            else:
                up = nets[parent]
                with up.client() as c:
                    inv = c.invite(code.rsplit(".", 1)[1])
                r = net.cnet("node", "join", up.url, "--token", inv.token, "--url", net.url)
            assert r.returncode == 0, r.stderr
            net.start_node()
            net.start_agent(f"{name}-pool", "--region", f"r-{name}")
            nets[name] = net
        _wait(lambda: len(_online(nets["root"])) == 4, 30, "the root to see all four nodes")
        yield nets
    finally:
        for net in nets.values():
            net.stop()


def _online(net: Network) -> set[str]:
    with net.client() as c:
        return {n.code for n in c.tree().nodes if n.status == "online" and n.pools_online}


def _wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _pools(tree: dict[str, Network]) -> dict[str, str]:
    """pool CPI → the node name that holds it."""
    out = {}
    for name, net in tree.items():
        with net.client() as c:
            for p in c.pools():
                out[p.cpi] = name
    return out


def _expected_path(frm: str, to: str) -> list[str]:
    def up(name: str) -> list[str]:
        chain = [name]
        while (p := NODES[chain[-1]][1]) is not None:
            chain.append(p)
        return chain

    a, b = up(frm), up(to)
    common = next(x for x in a if x in b)
    path = a[: a.index(common) + 1] + list(reversed(b[: b.index(common)]))
    return [NODES[n][0] for n in path]


def test_codes_come_from_the_delegation(tree: dict[str, Network]) -> None:
    for name, (code, _) in NODES.items():
        with tree[name].client() as c:
            assert {p.cpi.split(":")[1] for p in c.pools()} == {code}


def test_every_cpi_resolves_from_every_node(tree: dict[str, Network]) -> None:
    pools = _pools(tree)
    assert len(pools) == 4
    for asker, net in tree.items():
        with net.client() as c:
            for cpi, owner in pools.items():
                pool = next(p for p in _pools_of(tree[owner]) if p["cpi"] == cpi)
                machine = pool["machines"][0]
                for target, kind in ((cpi, "pool"), (machine["cpi"], "machine")):
                    res = c.resolve(target)
                    assert (res.record.cpi, res.record.kind) == (target, kind)
                    assert res.record.owner == NODES[owner][0]
                    assert res.record.endpoints == [tree[owner].url]
                    assert [link.code for link in res.chain][-1] == NODES[owner][0]
                    assert res.chain[0].code == "cn"
                    if not res.cached:
                        assert res.path == _expected_path(asker, owner), (asker, owner)
                    else:
                        assert res.path[0] == NODES[asker][0]
                prov = c.resolve(cpi.rsplit("/", 1)[0])
                assert prov.record.kind == "provider"


def _pools_of(net: Network) -> list[dict[str, object]]:
    r = httpx.get(f"{net.url}/v1/pools", headers={"authorization": f"Bearer {net.token}"})
    return list(r.json())


def test_resolve_cli_and_unknown_cpis(tree: dict[str, Network]) -> None:
    pools = _pools(tree)
    west_pool = next(c for c, n in pools.items() if n == "west")
    r = tree["fin"].cnet("resolve", west_pool)
    assert r.returncode == 0, r.stderr
    assert "owner cn.west" in r.stdout and "cn.east.fin → cn.east → cn → cn.west" in r.stdout
    r = tree["fin"].cnet("resolve", "cpi:cn.north:nobody/none")
    assert r.returncode != 0 and "cn.north" in r.stderr and "Traceback" not in r.stderr
    r = tree["root"].cnet("resolve", "cpi:cn.west:nobody/none")
    assert r.returncode != 0 and "no pool" in r.stderr
    r = tree["root"].cnet("resolve", "not-a-cpi")
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_tree_view_and_discovery_across_the_tree(tree: dict[str, Network]) -> None:
    with tree["root"].client() as c:
        view = c.tree()
    assert {n.code for n in view.nodes} == {"cn", "cn.east", "cn.west", "cn.east.fin"}
    parents = {n.code: n.parent for n in view.nodes}
    assert parents == {"cn": None, "cn.east": "cn", "cn.west": "cn", "cn.east.fin": "cn.east"}
    assert sum(a.pools_online for a in view.aggregates) == 4
    r = tree["root"].cnet("node", "tree")
    assert r.returncode == 0 and "cn.east.fin" in r.stdout
    with tree["fin"].client() as c:
        local = c.discover()
        everywhere = c.discover(scope="tree")
    assert {p.cpi.split(":")[1] for p in local.items} == {"cn.east.fin"}
    assert {p.cpi.split(":")[1] for p in everywhere.items} == set(parents)
    found = tree["fin"].cnet("find", "--tree")  # before, the CLI could not ask the tree
    assert found.returncode == 0 and "4 pool(s) matched" in found.stdout, found.stderr
    assert all(f"cpi:{code}:" in found.stdout for code in parents)
    bad = tree["fin"].cnet("find", "--watch", "--tree")
    assert bad.returncode == 2 and "without --order or --tree" in bad.stderr


def _node_key(net: Network) -> KeyPair:
    return KeyPair.load_or_create(net.home / "data" / "node" / "node.key")


def _post_summary(parent: Network, key: KeyPair, code: str, summary: Summary) -> httpx.Response:
    body = summary.model_dump_json().encode()
    path = "/v1/federation/summaries"
    headers = signed.sign(key, code, "POST", path, body, header=signed.HEADER_NODE)
    headers["content-type"] = "application/json"
    return httpx.post(parent.url + path, content=body, headers=headers)


def test_forged_and_replayed_summaries_are_refused(tree: dict[str, Network]) -> None:
    root, east = tree["root"], tree["east"]
    now = time.time()
    # Just ahead of east's own sequence (microseconds), which overtakes it again at once.
    honest = Summary(code="cn.east", seq=time.time_ns() // 1000 + 100_000, at=now)
    r = _post_summary(root, KeyPair.generate(), "cn.east", honest)  # a key root never delegated
    assert r.status_code == 401 and "bad node signature" in r.json()["detail"]
    r = _post_summary(root, _node_key(east), "cn.east", honest)
    assert r.status_code == 204
    r = _post_summary(root, _node_key(east), "cn.east", honest)  # the same again
    assert r.status_code == 409 and "replayed" in r.json()["detail"]
    west_pool = next(c for c, n in _pools(tree).items() if n == "west")
    with tree["west"].client() as c:
        stolen = next(p for p in c.discover().items if p.cpi == west_pool)
    minted = Summary(code="cn.east", seq=time.time_ns() // 1000, at=now, pools=[stolen])
    r = _post_summary(root, _node_key(east), "cn.east", minted)  # outside its prefix
    assert r.status_code == 401 and west_pool in r.json()["detail"]
    r = _post_summary(root, _node_key(tree["fin"]), "cn.east.fin", honest)  # a grandchild
    assert r.status_code == 401


def test_forged_delegations_and_tampered_records_are_refused(tree: dict[str, Network]) -> None:
    chain_file = tree["fin"].home / "data" / "node" / "federation.json"
    links = [Delegation(**x) for x in json.loads(chain_file.read_text())["chain"]]
    root_key = links[0].public_key
    assert verify_chain(links, root_key).code == "cn.east.fin"
    rogue = KeyPair.generate()
    # A node that signs a delegation it was never given the right to sign.
    forged = issue(rogue, "cn.east", "cn.east.fin", rogue.public_key, "http://127.0.0.1:1")
    with pytest.raises(ChainError, match="not signed by its issuer"):
        verify_chain([*links[:2], forged], root_key)
    # A node that delegates a code outside its own.
    sideways = issue(rogue, "cn.east.fin", "cn.west.x", rogue.public_key, "http://127.0.0.1:1")
    rogue_chain = [*links[:2], links[2].model_copy(update={"public_key": rogue.public_key})]
    with pytest.raises(ChainError):
        verify_chain([*rogue_chain, sideways], root_key)
    # Another root altogether.
    with pytest.raises(ChainError, match="not the root this node trusts"):
        verify_chain([issue(rogue, None, "cn", rogue.public_key, "http://x.example")], root_key)

    west_pool = next(c for c, n in _pools(tree).items() if n == "west")
    with tree["fin"].client() as c:
        res = c.resolve(west_pool)
    verify_record(res.record, res.signature, res.chain, root_key)
    tampered = res.record.model_copy(update={"status": "online", "capabilities": {"scu": 1e9}})
    with pytest.raises(ChainError, match="not signed"):
        verify_record(tampered, res.signature, res.chain, root_key)
    foreign = Record.model_validate({**res.record.model_dump(), "cpi": "cpi:cn.east:x/y"})
    with pytest.raises(ChainError, match="may not state"):
        verify_record(foreign, res.signature, res.chain, root_key)


def test_a_registration_under_another_prefix_is_refused(
    tree: dict[str, Network], tmp_path: Path
) -> None:
    """An agent that brings a CPI another node minted is told so, not given a second name."""

    async def register(cpi: str) -> None:
        ident = Identity.load(tmp_path / "identity", tmp_path / "provider.key")
        link = NodeLink(tree["root"].url, tree["root"].token, ident)
        try:
            await link.register(
                ProviderRegistration(name="movers", public_key=ident.provider_key.public_key),
                PoolInventory(
                    provider="movers",
                    name="moved",
                    public_key=ident.pool_key.public_key,
                    machines=[Machine(name="m0", cpus=1, memory_bytes=2**30)],
                    cpi=cpi,
                ),
            )
            await link.leave()  # no agent stays behind it: out of the tree's view at once
        finally:
            await link.close()

    with pytest.raises(ApiError) as e:
        asyncio.run(register("cpi:cn.west:movers/moved"))
    assert e.value.status == 409 and "minted under another code" in str(e.value)
    asyncio.run(register("cpi:cn:movers/moved"))  # its own code: accepted


def test_a_join_token_works_once(tree: dict[str, Network], tmp_path: Path) -> None:
    with tree["west"].client() as c:
        inv = c.invite("lab")
    first = tmp_path / "a"
    r = tree["west"].cnet(
        "node", "join", tree["west"].url, "--token", inv.token, "--url", "http://127.0.0.1:9",
        "--data-dir", str(first),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "cn.west.lab" in r.stdout
    r = tree["west"].cnet(
        "node", "join", tree["west"].url, "--token", inv.token, "--url", "http://127.0.0.1:9",
        "--data-dir", str(tmp_path / "b"),
    )  # fmt: skip
    assert r.returncode != 0 and "used already" in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_node_that_has_served_cannot_join(tree: dict[str, Network], tmp_path: Path) -> None:
    """Its pools' CPIs were minted under 'local': joined, it served them as cn.west.…,
    its parent refused every summary, and each agent was refused at its next start."""
    ran = Network(tmp_path / "ran", f"sqlite:///{tmp_path}/ran.db")
    ran.start_node()
    try:
        ran.start_agent("early")
    finally:
        ran.stop()
    with tree["west"].client() as c:
        inv = c.invite("late")
    r = ran.cnet(
        "node", "join", tree["west"].url, "--token", inv.token, "--url", ran.url,
        "--db", ran.db_url,
    )  # fmt: skip
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "has served already and minted the CPIs of 1 provider(s)" in r.stderr
    assert not list((ran.home).rglob("federation.json"))


def _west_pool(tree: dict[str, Network]) -> str:
    return next(c for c, n in _pools(tree).items() if n == "west")


def test_job_for_another_nodes_pool_runs_there(tree: dict[str, Network]) -> None:
    """Submitted at the industry node, pinned to a pool under the other regional node: it
    runs there, and the user at the industry node sees its output and exit code."""
    west_pool = _west_pool(tree)
    r = tree["fin"].cnet(
        "run", "--pool", west_pool, "--", "sh", "-c",
        'echo from west $CNET_JOB_ID; echo oops >&2; exit 3',
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    with tree["fin"].client() as c:
        job = c.list(limit=1).items[0]
    assert r.stdout == f"from west {job.id}\n" and "oops" in r.stderr  # the id known here
    assert (job.pool, job.state, job.exit_code) == (west_pool, JobState.FAILED, 3)
    with tree["west"].client() as c:
        there = [j for j in c.list(all_tenants=True, limit=50).items if j.pool == west_pool]
    assert any(j.tenant == "admin.cn.east.fin" and j.exit_code == 3 for j in there)
    odd = tree["fin"].cnet("run", "--pool", west_pool, "--optimize", "near", "--", "true")
    assert odd.returncode != 0 and "no goal 'near' for another node's pool" in odd.stderr


def test_a_function_session_on_another_nodes_pool_is_refused(tree: dict[str, Network]) -> None:
    """Its workers would call the pool's own node, which does not hold the session: the
    Executor waited for ever. It is refused, naming the pool."""
    west_pool = _west_pool(tree)
    fin = tree["fin"]
    headers = {"authorization": f"Bearer {fin.token}"}
    r = httpx.post(f"{fin.url}/v1/functions/sessions", json={"pool": west_pool}, headers=headers)
    assert r.status_code == 409, r.text
    assert r.json()["errors"][0]["field"] == "pool" and "open the session at that node" in r.text
    with fin.client() as c:
        assert not [j for j in c.list(limit=50).items if j.name.startswith("functions ")]


def test_a_job_sent_elsewhere_with_an_unknown_pool_of_this_node_is_refused(
    tree: dict[str, Network],
) -> None:
    """The far node checks only its own pools: a pool path on one the submitting node
    never had is refused here, at submission, not found missing at staging there."""
    west_pool = _west_pool(tree)
    fin_pool = next(c for c, n in _pools(tree).items() if n == "fin")
    unknown = fin_pool.rsplit("/", 1)[0] + "/nosuch"
    with tree["fin"].client() as c, pytest.raises(ApiError) as e:
        c.submit(command=["true"], pool=west_pool, inputs=[{"uri": f"{unknown}:/x", "path": "x"}])
    assert e.value.status == 422 and "inputs.0.uri" in str(e.value), e.value
    assert f"no pool '{unknown}' on this node" in str(e.value)


def test_a_dotted_local_tenant_from_before_cannot_share_a_far_tenants_jobs(
    tree: dict[str, Network],
) -> None:
    """A local tenant named as a forwarded one (possible before local names lost their
    dots) would share its jobs: the owner refuses the forwarded job until it is revoked."""
    west_pool = _west_pool(tree)
    engine = create_engine(tree["west"].db_url)
    with engine.begin() as conn:  # as an older release made it
        old = token_store.create(conn, "old", "admin.cn.east.fin", Role.tenant)
    engine.dispose()
    try:
        r = tree["fin"].cnet("run", "--pool", west_pool, "--", "true", timeout=120)
        assert r.returncode != 0 and "also a local tenant" in r.stderr, r.stderr
    finally:
        with tree["west"].client() as c:
            c.revoke_token(old.id)
    r = tree["fin"].cnet("run", "--pool", west_pool, "--", "true", timeout=120)
    assert r.returncode == 0, r.stderr


def test_job_that_fits_only_elsewhere_is_placed_there(tree: dict[str, Network]) -> None:
    with tree["fin"].client() as c:
        job = c.submit(command=["echo", "placed far away"], regions=["r-west"])
        done = c.wait(job.id, timeout=60)
        assert done.state is JobState.COMPLETE, done.reason
        assert done.pool == _west_pool(tree)
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "placed far away\n"
        with pytest.raises(ApiError) as e:
            c.submit(command=["true"], regions=["r-nowhere"])
        assert e.value.status == 409


def test_a_node_without_pools_places_work_in_its_tree(
    tree: dict[str, Network], tmp_path: Path
) -> None:
    """A node that joined the tree but fronts no pool of its own: its jobs waited for ever
    ('no pool online'). They go to a pool of the tree that can take them, and one that
    fits nowhere is refused."""
    bare = Network(tmp_path / "bare", f"sqlite:///{tmp_path}/bare.db")
    with tree["east"].client() as c:
        inv = c.invite("bare")
    r = bare.cnet("node", "join", tree["east"].url, "--token", inv.token, "--url", bare.url)
    assert r.returncode == 0, r.stderr
    r = bare.cnet("node", "serve", "--code", "zz", "--db", bare.db_url)  # ignored, unsaid
    assert r.returncode == 2 and "this node is cn.east.bare of its tree" in r.stderr, r.stderr
    bare.start_node()
    try:
        with bare.client() as c:
            job = c.submit(command=["echo", "from somewhere in the tree"])
            done = c.wait(job.id, timeout=90)
            assert done.state is JobState.COMPLETE, done.reason
            assert done.pool is not None and not done.pool.startswith("cpi:cn.east.bare:")
            batch = c.submit_many([{"command": ["true"]}, {"command": ["true"]}])
            for job in batch:
                assert c.wait(job.id, timeout=90).state is JobState.COMPLETE
            with pytest.raises(ApiError) as refused:
                c.submit(command=["true"], regions=["mars"])
            assert refused.value.status == 409
    finally:
        bare.stop()


def test_cancel_at_the_submitting_node_stops_it_there(tree: dict[str, Network]) -> None:
    west_pool = _west_pool(tree)
    marker = "sleep 301.5"
    with tree["fin"].client() as c:
        job = c.submit(command=["sh", "-c", f"{marker}; echo never"], pool=west_pool)
        _wait(lambda: c.get(job.id).state is JobState.RUNNING, 60, "the job to run at west")
        c.cancel(job.id)
        done = c.wait(job.id, timeout=60)
    assert done.state is JobState.CANCELED
    _wait(lambda: not procs_with(marker), 30, "the process at west to be gone")
    with tree["west"].client() as c:
        there = [j for j in c.list(all_tenants=True, limit=50).items if j.tenant.endswith("fin")]
    assert any(j.state is JobState.CANCELED for j in there)


def test_a_forwarded_job_says_why_it_waits_at_its_owner(tree: dict[str, Network]) -> None:
    """Here it is SCHEDULED once forwarded; while the owner still queues it, its reason says
    why, as a job waiting here would."""
    west_pool = _west_pool(tree)
    with tree["west"].client() as c:
        cpus = next(p for p in c.pools() if p.cpi == west_pool).capacity.cpus
        blocker = c.submit(command=["sleep", "60"], pool=west_pool, resources={"cpus": cpus})
        try:
            with tree["fin"].client() as far:
                job = far.submit(command=["true"], pool=west_pool)
                _wait(lambda: "there: waiting" in far.get(job.id).reason, 60, "the reason")
                assert far.get(job.id).state is JobState.SCHEDULED
                far.cancel(job.id)
        finally:
            c.cancel(blocker.id)


def test_killed_regional_node_drops_out_and_comes_back(tree: dict[str, Network]) -> None:
    east = tree["east"]
    before = {c for c, n in _pools(tree).items() if n in ("east", "fin")}
    assert east.node is not None
    east.node.kill()
    started = time.monotonic()
    _wait(lambda: _online(tree["root"]) == {"cn", "cn.west"}, TIMEOUT * 3, "east to drop out")
    assert time.monotonic() - started <= TIMEOUT * 3
    with tree["root"].client() as c:
        view = c.tree()
        assert sum(a.pools_online for a in view.aggregates) == 2
        assert {n.code: n.status for n in view.nodes}["cn.east"] == "offline"
        seen = {p.cpi for p in c.discover(scope="tree").items}
    assert not seen & before
    east.start_node()
    _wait(lambda: len(_online(tree["root"])) == 4, 30, "east and fin to come back")
    with tree["root"].client() as c:
        seen = {p.cpi for p in c.discover(scope="tree").items}
    assert before <= seen
