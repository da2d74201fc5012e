"""Resolution latency in a three-level hierarchy with 100,000 registered CPIs.

    python bench/resolve.py [--pools 100000] [--samples 1000]

Three real node processes: root ``cn`` (which holds the pools), ``cn.a`` under it and
``cn.a.b`` under that. A CPI is resolved at ``cn`` (local), at ``cn.a`` (one referral, up
to the root) and at ``cn.a.b`` (two referrals). Cold: each CPI asked for the first time
at that node and at every node on the way; warm: the same CPIs again, answered from the
asking node's cache (records are verified when they enter it). Writes
bench/results/resolve.json and resolve.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.discovery import Node, populate
from bench.harness import CLI, machine, percentile, write


def _cli(home: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNET_")}
    env["CNET_HOME"] = str(home)
    subprocess.run([*CLI, *args], env=env, check=True, capture_output=True, timeout=120)


def _times(c: httpx.Client, cpis: list[str]) -> list[float]:
    out = []
    for cpi in cpis:
        t = time.perf_counter()
        r = c.get(f"/v1/resolve/{cpi}")
        out.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pools", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cnet-resolve-"))
    homes = {code: tmp / code for code in ("cn", "cn.a", "cn.a.b")}
    t = time.perf_counter()
    populate(f"sqlite:///{tmp}/cn.db", args.pools, code="cn")
    populate_s = time.perf_counter() - t
    rng = random.Random(7)
    every = [f"cpi:cn:prov/p{i:06d}" for i in range(args.pools)]
    picks = rng.sample(every, args.samples * 3)
    local, one, two = (picks[i * args.samples : (i + 1) * args.samples] for i in range(3))
    res: dict[str, Any] = {"machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    nodes: list[Node] = []
    try:
        parent = None
        for code, home in homes.items():
            home.mkdir(parents=True, exist_ok=True)
            # No agents behind the pools: liveness timeouts of an hour keep them online.
            node = Node(
                home,
                f"sqlite:///{tmp}/{code}.db",
                CNET_SUSPECT_AFTER="3600",
                CNET_OFFLINE_AFTER="7200",
            )
            if parent is None:
                _cli(home, "node", "init", "--root", "--code", code, "--url", node.url)
            else:
                with httpx.Client(base_url=parent.url, timeout=30) as c:
                    r = c.post(
                        "/v1/federation/invites",
                        json={"label": code.rsplit(".", 1)[1]},
                        headers={"authorization": f"Bearer {parent.token}"},
                    )
                    r.raise_for_status()
                _cli(
                    home,
                    "node",
                    "join",
                    parent.url,
                    "--token",
                    r.json()["token"],
                    "--url",
                    node.url,
                )
            nodes.append(node.__enter__())
            parent = node
        root, mid, leaf = nodes
        rows = []
        for label, at, cpis in (
            ("local", root, local),
            ("one referral", mid, one),
            ("two referrals", leaf, two),
        ):
            h = {"authorization": f"Bearer {at.token}"}
            with httpx.Client(base_url=at.url, headers=h, timeout=60) as c:
                _times(c, every[:20])  # warm-up: connections, code paths
                cold = _times(c, cpis)
                warm = _times(c, cpis)
            for cache, lat in (("cold", cold), ("warm", warm)):
                rows.append(
                    {
                        "case": label,
                        "cache": cache if label != "local" else f"none ({cache} pass)",
                        "requests": len(lat),
                        "p50_ms": round(percentile(lat, 50), 3),
                        "p99_ms": round(percentile(lat, 99), 3),
                    }
                )
        res["results"] = rows
    finally:
        for n in reversed(nodes):
            n.__exit__(None, None, None)
    res["pools"] = args.pools
    res["populate_s"] = round(populate_s, 2)
    local_p99 = max(r["p99_ms"] for r in rows if r["case"] == "local")
    warm_p99 = max(r["p99_ms"] for r in rows if r["case"] != "local" and r["cache"] == "warm")
    res["targets"] = {"local_p99_ms<=2": local_p99 <= 2, "warm_referral_p99_ms<=5": warm_p99 <= 5}
    lines = [
        "# Resolution across a three-level hierarchy",
        "",
        f"{args.pools} pools registered at the root `cn`; each figure over {args.samples} "
        "distinct CPIs, asked over HTTP at the node named.",
        "",
        "| case | asked at | cache | p50 ms | p99 ms |",
        "|---|---|---|---:|---:|",
    ]
    at_node = {"local": "cn", "one referral": "cn.a", "two referrals": "cn.a.b"}
    for r in rows:
        lines.append(
            f"| {r['case']} | {at_node[r['case']]} | {r['cache']} | {r['p50_ms']} | {r['p99_ms']} |"
        )
    lines += ["", f"Targets: local p99 ≤ 2 ms, warm referral p99 ≤ 5 ms: {res['targets']}.", ""]
    text = "\n".join(lines)
    write("resolve", res, text)
    print(text)
    print(json.dumps(res["targets"], indent=2))


if __name__ == "__main__":
    main()
