"""Nodes in a hierarchy: start a root, invite and join children, look at the tree, resolve."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import ValidationError
from rich.tree import Tree

from computenet import config
from computenet.cli.output import ago, fail, friendly, out
from computenet.cli.session import client
from computenet.ident.cpi import check_authority
from computenet.ident.delegation import ChainError, root, verify_chain
from computenet.model.federation import JoinAnswer, JoinRequest, NodeBrief

DataDir = Annotated[
    Path | None, typer.Option(help="the node's data directory (default: as 'cnet node serve')")
]


Database = Annotated[
    str | None,
    typer.Option(
        "--db", envvar="CNET_DATABASE_URL", help="the node's database (default: as 'node serve')"
    ),
]


def _data_dir(given: Path | None) -> Path:
    return given if given is not None else config.data_dir() / "node"


def _unminted(where: Path, db: str | None, code: str | None = None) -> None:
    """A node that has served already minted its providers' and pools' CPIs under the
    code it had: they never change meaning, so it cannot take a code in a tree now; a
    root may keep the ``code`` it served under."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from computenet.node.store.db import make_engine, sqlite_url

    url = db or sqlite_url(where / "computenet.db")
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            return  # never served: and no empty database is made here
        engine = make_engine(url)
    except Exception as e:  # a URL it cannot use: 'node serve' says which
        fail(f"--db: not a database URL this node can use: {e}", 2)
        return
    try:
        with engine.connect() as conn:
            n = conn.execute(
                text("SELECT count(*) FROM providers WHERE cpi NOT LIKE :mine"),
                {"mine": f"cpi:{code}:%" if code else ""},
            ).scalar_one()
    except SQLAlchemyError:
        return  # no database, or no tables yet: nothing minted
    finally:
        engine.dispose()
    if n:
        fail(
            f"this node has served already and minted the CPIs of {n} provider(s) under its "
            "code; a CPI never changes meaning, so it cannot take a code in a tree now. "
            "Join from a fresh --data-dir and database, and register its pools there"
        )


def node_init(
    code: Annotated[str, typer.Option(help="the root's code, e.g. 'cn'")],
    url: Annotated[str, typer.Option(help="the URL this node serves at, for its children")],
    is_root: Annotated[bool, typer.Option("--root", help="make this node a root")] = False,
    data_dir: DataDir = None,
    db: Database = None,
) -> None:
    """Make this node the root of a hierarchy: it certifies its own code."""
    from computenet.node.federation import Membership, load_membership, node_key, save_membership

    if not is_root:
        fail("only a root is initialised; other nodes join one with 'cnet node join'")
    try:
        check_authority(code)
    except ValueError as e:
        fail(f"--code: {e}", 2)
    where = _data_dir(data_dir)
    if load_membership(where) is not None:
        fail(f"{where} already belongs to a hierarchy")
    _unminted(where, db, code)
    key = node_key(where)
    save_membership(where, Membership([root(key, code, url.rstrip("/"))]))
    out.print(f"root {code} at {url}; key {key.public_key}")


def node_join(
    parent: Annotated[str, typer.Argument(help="the parent node's URL")],
    token: Annotated[str, typer.Option(help="the one-time token from 'cnet node invite'")],
    url: Annotated[str, typer.Option(help="the URL this node serves at")],
    data_dir: DataDir = None,
    db: Database = None,
) -> None:
    """Join a parent node: it delegates this node a code under its own.

    Run it before 'cnet node serve' (or restart the node after it): the node takes its code
    from the delegation.
    """
    from computenet.node.federation import Membership, load_membership, node_key, save_membership

    if not 10 <= len(token) <= 200:  # before anything is made: a key, a file
        fail("--token: not a join token; 'cnet node invite' at the parent gives one", 2)
    where = _data_dir(data_dir)
    if load_membership(where) is not None:
        fail(f"{where} already belongs to a hierarchy")
    _unminted(where, db)
    key = node_key(where)
    fields = {
        "token": token,
        "public_key": key.public_key,
        "url": url.rstrip("/"),
        "signed_at": time.time(),
    }
    try:
        req = JoinRequest.model_validate({**fields, "signature": key.sign_json(fields)})
    except ValidationError as e:
        first = e.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if field == "token":
            fail("--token: not a join token; 'cnet node invite' at the parent gives one", 2)
        said = f"--{field}" if field == "url" else "invalid join request"
        fail(f"{said}: {friendly(first)}", 2)
        return
    try:
        r = httpx.post(
            parent.rstrip("/") + "/v1/federation/join", json=req.model_dump(mode="json"), timeout=30
        )
    except httpx.HTTPError as e:
        fail(f"cannot reach {parent}: {e}")
        return
    if r.status_code != 201:
        detail = (
            r.json().get("detail") if r.headers.get("content-type", "").endswith("json") else ""
        )
        fail(f"{parent} refused to delegate: {detail or r.status_code}")
    chain = JoinAnswer.model_validate(r.json()).chain
    try:
        mine = verify_chain(chain)
    except ChainError as e:
        fail(f"the delegation from {parent} does not verify: {e}")
        return
    if mine.public_key != key.public_key:
        fail(f"{parent} delegated to another key")
    save_membership(where, Membership(chain, parent.rstrip("/")))
    out.print(f"joined {parent} as {mine.code} (root {chain[0].code})")


def node_invite(
    label: Annotated[str, typer.Argument(help="the child's label: its code is <code>.<label>")],
    ttl: Annotated[float, typer.Option(help="seconds the token stays valid")] = 3600,
) -> None:
    """A one-time token for a child node to join under this one (admin)."""
    with client() as c:
        inv = c.invite(label, ttl)
    out.print(f"code {inv.code}; join with (valid {ttl:g} s, once):")
    print(f"cnet node join {c.url} --token {inv.token} --url URL")
    out.print("[dim](URL: where the child node will serve, e.g. http://10.0.0.7:8787)[/]")


def node_tree() -> None:
    """This node, the nodes below it and what they hold."""
    with client() as c:
        view = c.tree()
    by_parent: dict[str | None, list[NodeBrief]] = {}
    for n in view.nodes:
        by_parent.setdefault(n.parent, []).append(n)

    def label(n: NodeBrief) -> str:
        seen = "" if n.last_summary_at is None else f", heard {ago(_dt(n.last_summary_at))}"
        colour = "green" if n.status == "online" else "red"
        return f"[bold]{n.code}[/] [{colour}]{n.status}[/] {n.url} ({n.pools_online} pools{seen})"

    top = view.nodes[0]
    tree = Tree(label(top))

    def add(branch: Tree, code: str) -> None:
        for child in by_parent.get(code, []):
            add(branch.add(label(child)), child.code)

    add(tree, top.code)
    out.print(tree)
    for a in view.aggregates:
        price = "" if a.price_min is None else f", {a.price_min:g}-{a.price_max:g}/h"
        name = " ".join(x for x in (a.vendor, a.model) if x) or a.kind
        out.print(
            f"  {a.region or '-'}: {name} {a.devices_free}/{a.devices_total} free, "
            f"{a.scu:.3g} SCU, {a.pools_online} pools{price}"
        )


def resolve(
    cpi: Annotated[str, typer.Argument(help="a CPI")],
    as_json: Annotated[bool, typer.Option("--json", help="the whole signed answer")] = False,
) -> None:
    """What a CPI names, wherever in the tree it was minted."""
    with client() as c:
        res = c.resolve(cpi)
    if as_json:
        print(res.model_dump_json(indent=2))
        return
    rec = res.record
    out.print(f"{rec.cpi}: {rec.kind}, owner {rec.owner}, {rec.status}")
    out.print(f"  endpoints: {', '.join(rec.endpoints) or '-'}")
    out.print(f"  path: {' → '.join(res.path)}{' (cached)' if res.cached else ''}")
    out.print(f"  chain: {' → '.join(link.code for link in res.chain)}, signature verified")
    for k, v in rec.capabilities.items():
        shown = json.dumps(v) if isinstance(v, dict | list) else "-" if v in (None, "") else v
        out.print(f"  {k}: {shown}", markup=False)


def _dt(ts: float):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)
