"""Datasets and data locality against a real node and two real, equal agents, on SQLite
and PostgreSQL: publish with ``cnet cp``, find with ``cnet dataset``; a job whose input
sits in one pool runs there; a job pinned elsewhere stages the input over the network and
leaves a replica; outputs are published as datasets; bad input is refused by field."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from computenet.model import JobSpec, JobState, PoolListing, PoolStatus
from computenet.model.dataset import DatasetRef, DatasetRemoval, parse_data_uri
from computenet.model.transfer import TransferGrant, TransferResult
from computenet.node.sched.framework import Context, JobView, PoolView
from computenet.node.sched.scores.locality import DEFAULT_RATE, DataLocality
from computenet.sdk import ApiError
from computenet.transfer import client as transfer_client
from computenet.transfer import records
from computenet.transfer.faults import ENV as FAULTS
from computenet.transfer.manifest import CHUNK
from computenet.transfer.wire import TransferError
from conftest import PYTHON, Network, held_open

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def pool_config(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.yaml"
    machine = {"name": name, "cpus": 2, "memory_bytes": "4G", "devices": []}
    path.write_text(yaml.safe_dump({"pool": name, "region": "cn-east", "machines": [machine]}))
    return path


@pytest.fixture(scope="module")
def net(shared: Network, tmp_path_factory: pytest.TempPathFactory) -> Network:
    tmp = tmp_path_factory.mktemp("pools")
    for name in ("pool-a", "pool-b"):
        shared.start_agent(name, "--config", str(pool_config(tmp, name)))
    return shared


def cpi(net: Network, name: str) -> str:
    with net.client() as c:
        return next(p.cpi for p in c.pools() if p.name == name)


def cnet(net: Network, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(net.env, CNET_TOKEN=net.token)
    return subprocess.run([*PYTHON, *args], env=env, capture_output=True, text=True, timeout=120)


def publish(net: Network, src: Path, uri: str, pool: str) -> str:
    proc = cnet(net, "cp", "--json", "--pool", pool, str(src), uri)  # by name
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["destination"])


def corpus(tmp: Path, tag: str) -> Path:
    root = tmp / f"corpus-{tag}"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(f"alpha {tag}\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4096)
    return root


def run(net: Network, **spec: object) -> tuple[str, str]:
    """The pool the job ran on (by name) and its output."""
    with net.client() as c:
        job = c.wait(c.submit(**spec).id, timeout=90)
        out = "".join(x["data"] for x in c.logs(job.id) if x["stream"] == "stdout")
    assert job.state is JobState.COMPLETE, job.reason
    assert job.pool is not None
    return job.pool.rsplit("/", 1)[-1], out


def test_a_job_runs_where_its_input_is(net: Network, tmp_path: Path) -> None:
    uri = publish(net, corpus(tmp_path, "a"), "cnet://dataset/corpus-a", "pool-a")
    assert uri == "cnet://dataset/corpus-a@1"
    read = ["sh", "-c", "cat in/a.txt && wc -c < in/sub/b.bin"]
    for _ in range(2):
        where, out = run(
            net, command=read, inputs=[{"uri": "cnet://dataset/corpus-a", "path": "in"}]
        )
        assert where == "pool-a"
        assert out.split() == ["alpha", "a", str(256 * 4096)]
    modes = ["stat", "-c", "%a", "in/a.txt", "in/sub/b.bin"]  # the copy's own files
    _, out = run(net, command=modes, inputs=[{"uri": "cnet://dataset/corpus-a", "path": "in"}])
    assert out.split() == ["444", "444"]
    spoil = ["sh", "-c", "chmod u+w in/a.txt || echo spoiled >> in/a.txt || exit 9"]
    with net.client() as c:
        job = c.wait(
            c.submit(command=spoil, inputs=[{"uri": "cnet://dataset/corpus-a", "path": "in"}]).id,
            timeout=90,
        )
    assert (job.state, job.exit_code) == (JobState.FAILED, 9)  # read-only, even to its owner
    copy = net.home / "agents" / "pool-a" / "data" / "datasets" / "corpus-a"
    assert [p.read_text() for p in copy.rglob("a.txt")] == ["alpha a\n"]
    with net.client() as c:
        plan = c.plan(command=["true"], inputs=[{"uri": "cnet://dataset/corpus-a", "path": "x"}])
        with pytest.raises(ApiError) as nosuch:  # refused as submission refuses it
            c.plan(command=["true"], inputs=[{"uri": "cnet://dataset/nosuch", "path": "x"}])
    assert nosuch.value.status == 422 and "inputs.0.uri" in str(nosuch.value)
    seconds = {x.pool.rsplit("/", 1)[-1]: x.raw["locality"] for x in plan.candidates}
    size = len("alpha a\n") + 256 * 4096  # over a link nothing has crossed yet
    assert seconds["pool-a"] == 0 and seconds["pool-b"] == round(size / DEFAULT_RATE, 4)
    assert plan.choice is not None and plan.choice.endswith("/pool-a")
    # The same, with the data only in the pool that registered second (and so loses ties).
    publish(net, corpus(tmp_path, "b"), "cnet://dataset/corpus-b@v2", "pool-b")
    where, out = run(net, command=read, inputs=[{"uri": "cnet://dataset/corpus-b", "path": "in"}])
    assert (where, out.split()[:2]) == ("pool-b", ["alpha", "b"])


def test_a_version_is_verified_as_it_lands_even_when_the_sender_says_not(
    net: Network, tmp_path: Path
) -> None:
    """``--no-verify`` trusts the wire for a plain copy; a dataset version is what other
    pools check their copies against, so its pool checks every chunk regardless."""
    src = tmp_path / "v"
    src.mkdir()
    (src / "blob").write_bytes(os.urandom(2 * CHUNK + 5))
    env = dict(net.env, CNET_TOKEN=net.token, **{FAULTS: "corrupt:chunk=2"})
    args = ["cp", "--json", "--no-verify", "--pool", "pool-a", str(src), "cnet://dataset/nv"]
    proc = subprocess.run([*PYTHON, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    k = json.loads(proc.stdout)["counters"]
    assert k["faults"] >= 1 and k["retries"] >= 1  # caught, and sent again
    kept = net.home / "agents" / "pool-a" / "data" / "datasets" / "nv"
    assert [p.read_bytes() for p in kept.rglob("blob")] == [(src / "blob").read_bytes()]


def test_a_job_elsewhere_stages_the_input_and_leaves_a_replica(
    net: Network, tmp_path: Path
) -> None:
    publish(net, corpus(tmp_path, "c"), "cnet://dataset/corpus-c", "pool-a")
    b = cpi(net, "pool-b")
    where, out = run(
        net,
        command=["sh", "-c", "cat data/a.txt"],
        pool=b,
        inputs=[{"uri": "cnet://dataset/corpus-c@1", "path": "data"}],
    )
    assert (where, out) == ("pool-b", "alpha c\n")
    with net.client() as c:
        v = c.dataset("corpus-c").versions[0]
    assert {r.pool.rsplit("/", 1)[-1] for r in v.replicas} == {"pool-a", "pool-b"}
    kept = net.home / "agents" / "pool-b" / "data" / "datasets" / "corpus-c" / "1"
    assert (kept / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 4096


def test_a_job_input_names_a_path_inside_a_version(net: Network, tmp_path: Path) -> None:
    """Only that path of the version is at the input's place; the version is pinned,
    placed by and staged whole, and a path it lacks fails the job, naming it."""
    publish(net, corpus(tmp_path, "q"), "cnet://dataset/corpus-q", "pool-a")
    inputs = [
        {"uri": "cnet://dataset/corpus-q/a.txt", "path": "one.txt"},
        {"uri": "cnet://dataset/corpus-q@1/./sub/", "path": "part"},
    ]
    read = ["sh", "-c", "cat one.txt && ls part && wc -c < part/b.bin"]
    with net.client() as c:
        measured = {(k.source, k.destination): k.rate for k in c.links()}
        plan = c.plan(command=["true"], inputs=inputs)
        job = c.submit(command=read, inputs=inputs, pool=cpi(net, "pool-b"))
        pinned = ["cnet://dataset/corpus-q@1/a.txt", "cnet://dataset/corpus-q@1/sub"]
        assert [i.uri for i in job.spec.inputs] == pinned
        job = c.wait(job.id, timeout=90)
        out = "".join(x["data"] for x in c.logs(job.id) if x["stream"] == "stdout")
        v = c.dataset("corpus-q").versions[0]
        missing = c.submit(
            command=["true"], inputs=[{"uri": "cnet://dataset/corpus-q@1/sub/nope", "path": "x"}]
        )
        missing = c.wait(missing.id, timeout=60)
    rate = measured.get((cpi(net, "pool-a"), cpi(net, "pool-b")), DEFAULT_RATE)
    seconds = {x.pool.rsplit("/", 1)[-1]: x.raw["locality"] for x in plan.candidates}
    assert seconds["pool-a"] == 0
    assert seconds["pool-b"] == round(v.total_bytes / rate, 4)  # the whole version
    parts = {x.pool.rsplit("/", 1)[-1]: x.parts["locality"] for x in plan.candidates}
    spread = max(seconds["pool-b"], 1.0)  # the range, or the score's resolution of 1 s
    assert parts["pool-a"] == 100  # a megabyte is not stretched over the whole 0..100
    assert parts["pool-b"] == pytest.approx(100 * (1 - seconds["pool-b"] / spread), abs=0.01)
    assert job.state is JobState.COMPLETE, job.reason
    assert out.split() == ["alpha", "q", "b.bin", str(256 * 4096)]
    kept = net.home / "agents" / "pool-b" / "data" / "datasets" / "corpus-q" / "1"
    assert (kept / "a.txt").read_text() == "alpha q\n"  # the version, kept for later jobs
    assert {r.pool.rsplit("/", 1)[-1] for r in v.replicas} == {"pool-a", "pool-b"}
    assert missing.state is JobState.FAILED
    assert "corpus-q@1/sub/nope: no such file or directory in cnet://dataset/corpus-q@1" in (
        missing.reason
    )


def test_outputs_are_published_and_copied_back(net: Network, tmp_path: Path) -> None:
    where, _ = run(
        net,
        # A pipe and a link are no version's files: left out, as a copy leaves them.
        command=[
            "sh",
            "-c",
            "mkdir -p out && echo forty-two > out/answer.txt && mkfifo out/pipe "
            "&& ln -s answer.txt out/link",
        ],
        outputs=[{"path": "out", "uri": "cnet://dataset/answers"}],
    )
    with net.client() as c:
        v = c.dataset("answers").versions[0]
    assert v.version == "1" and v.files == 1
    assert [r.pool.rsplit("/", 1)[-1] for r in v.replicas] == [where]
    proc = cnet(net, "cp", "--json", "cnet://dataset/answers", str(tmp_path / "back"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "back" / "answer.txt").read_text() == "forty-two\n"
    shown = cnet(net, "dataset", "show", "answers")
    assert shown.returncode == 0 and "cnet://dataset/answers@1" in shown.stdout
    listed = cnet(net, "dataset", "ls", "--json")
    assert "answers" in {d["name"] for d in json.loads(listed.stdout)}
    table = cnet(net, "dataset", "ls")  # who owns a name, before a publish is refused
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("answers"))
    assert row[:3] == ["answers", "1", "admin"], table.stdout
    inside = cnet(net, "ls", "--json", "cnet://dataset/answers@1")
    assert inside.returncode == 0, inside.stderr
    page = PoolListing.model_validate_json(inside.stdout)
    assert page.pool == v.replicas[0].pool and page.path == v.replicas[0].path
    assert [(x.name, x.size) for x in page.entries] == [("answer.txt", len("forty-two\n"))]


def test_a_path_inside_a_version_is_copied_and_checked_against_the_version(
    net: Network, tmp_path: Path
) -> None:
    src = corpus(tmp_path, "p")
    publish(net, src, "cnet://dataset/corpus-p", "pool-a")
    one = cnet(net, "cp", "--json", "cnet://dataset/corpus-p@1/sub/b.bin", str(tmp_path / "b"))
    assert one.returncode == 0, one.stderr
    assert TransferResult.model_validate_json(one.stdout).source == (
        "cnet://dataset/corpus-p@1/sub/b.bin"
    )
    assert (tmp_path / "b").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    b = cpi(net, "pool-b")
    part = cnet(net, "cp", "--json", "cnet://dataset/corpus-p/sub", f"{b}:/parts/sub")
    assert part.returncode == 0, part.stderr
    landed = net.home / "agents" / "pool-b" / "data" / "parts" / "sub" / "b.bin"
    assert landed.read_bytes() == (src / "sub" / "b.bin").read_bytes()
    with net.client() as c:
        v = c.dataset("corpus-p").versions[0]
    assert len(v.replicas) == 1  # a part of a version is not a copy of it

    nope = cnet(net, "cp", "cnet://dataset/corpus-p@1/nope", str(tmp_path / "nope"))
    assert nope.returncode == 1 and "no such file or directory in the version" in nope.stderr
    gone = cnet(net, "ls", "cnet://dataset/corpus-p@1/sub/nope")
    assert gone.returncode == 1
    assert gone.stderr.strip() == (  # named as the user named it, not by its copy's path
        "error: cnet://dataset/corpus-p@1/sub/nope: no such file or directory in the version"
    )
    blank = cnet(net, "cp", str(src), "cnet://dataset//sub")
    assert blank.returncode == 1 and "a dataset name is 1 to 63 of" in blank.stderr
    up = cnet(net, "cp", "cnet://dataset/corpus-p@1/../x", str(tmp_path / "up"))
    assert up.returncode == 1 and "'..' is not allowed" in up.stderr
    r = httpx.post(
        f"{net.url}/v1/jobs",
        json={
            "command": ["true"],
            "outputs": [{"uri": "cnet://dataset/corpus-p/sub", "path": "x"}],
        },
        headers={"authorization": f"Bearer {net.token}"},
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "outputs.0.uri", r.text
    assert "a job's inputs" in r.json()["detail"]

    copy = net.home / "agents" / "pool-a" / "data" / v.replicas[0].path.strip("/")
    (copy / "a.txt").write_text("changed beside the part asked for\n")
    again = cnet(net, "cp", "cnet://dataset/corpus-p@1/sub/b.bin", str(tmp_path / "again"))
    assert again.returncode == 1 and "has changed since it was recorded" in again.stderr
    assert not (tmp_path / "again").exists()


def test_a_version_is_removed_with_every_copy_and_only_by_name(
    net: Network, tmp_path: Path
) -> None:
    publish(net, corpus(tmp_path, "r"), "cnet://dataset/corpus-r", "pool-a")
    b = cpi(net, "pool-b")
    copied = cnet(net, "cp", "--json", "cnet://dataset/corpus-r@1", f"{b}:/copies/r")
    assert copied.returncode == 0, copied.stderr
    assert json.loads(copied.stdout)["replica_of"] == "cnet://dataset/corpus-r@1"
    with net.client() as c:
        v = c.dataset("corpus-r").versions[0]
    assert len(v.replicas) == 2

    sub = cnet(net, "ls", "--json", "cnet://dataset/corpus-r@1/sub")
    assert sub.returncode == 0, sub.stderr
    assert [x.name for x in PoolListing.model_validate_json(sub.stdout).entries] == ["b.bin"]
    nine = cnet(net, "ls", "cnet://dataset/corpus-r@9")
    assert nine.returncode == 1 and "no such version (it has 1)" in nine.stderr
    whole = cnet(net, "rm", "-r", "cnet://dataset/corpus-r@1")
    assert whole.returncode == 1 and "cnet dataset rm" in whole.stderr
    held = cnet(net, "rm", "-r", f"{b}:/copies/r")
    assert held.returncode == 1 and "holds dataset corpus-r@1" in held.stderr
    assert cnet(net, "ls", f"{b}:/copies/r").returncode == 0
    vague = cnet(net, "dataset", "rm", "corpus-r")
    assert vague.returncode == 2 and "name the version" in vague.stderr

    with net.client() as c:
        stranger = c.create_token("stranger", "stranger").secret
    env = dict(net.env, CNET_TOKEN=stranger)
    theirs = subprocess.run(
        [*PYTHON, "dataset", "rm", "corpus-r@1"], env=env, capture_output=True, text=True
    )
    assert theirs.returncode == 1 and "belongs to tenant" in theirs.stderr

    proc = cnet(net, "dataset", "rm", "--json", "corpus-r@1")
    assert proc.returncode == 0, proc.stderr
    gone = DatasetRemoval.model_validate_json(proc.stdout)
    assert not gone.left and {(r.pool, r.path) for r in gone.removed} == {
        (x.pool, "/" + x.path.strip("/")) for x in v.replicas
    }
    assert all(r.files == 2 for r in gone.removed)
    for x in v.replicas:
        listed = cnet(net, "ls", f"{x.pool}:{x.path}")
        assert listed.returncode == 1 and "no such file or directory" in listed.stderr
    a = cpi(net, "pool-a")
    shown = cnet(net, "dataset", "show", "corpus-r")
    assert shown.returncode == 0 and "no versions" in shown.stdout, shown.stdout
    assert "removed: 1 (never used again)" in shown.stdout
    again = cnet(net, "dataset", "rm", "corpus-r@1")
    assert again.returncode == 1 and "corpus-r@1 was removed" in again.stderr, again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    # A removed version's number is never given out again, nor its name to someone else:
    # cnet://dataset/corpus-r@1 can never name other data than it did.
    reused = cnet(net, "cp", "--pool", a, str(corpus(tmp_path, "r1")), "cnet://dataset/corpus-r@1")
    assert reused.returncode == 1 and "never used again" in reused.stderr, reused.stderr
    assert cnet(net, "ls", f"{a}:/datasets/corpus-r/1").returncode == 1  # nothing moved
    with net.client() as c, pytest.raises(ApiError, match="was removed") as refused:
        c.submit(command=["true"], outputs=[{"path": "o", "uri": "cnet://dataset/corpus-r@1"}])
    assert refused.value.status == 409
    assert refused.value.problem.errors[0].field == "outputs.0.uri"
    taken = subprocess.run(
        [*PYTHON, "cp", "--pool", a, str(corpus(tmp_path, "r3")), "cnet://dataset/corpus-r"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert taken.returncode == 1 and "belongs to tenant" in taken.stderr, taken.stderr
    newer = publish(net, corpus(tmp_path, "r2"), "cnet://dataset/corpus-r", "pool-a")
    assert newer == "cnet://dataset/corpus-r@2"
    both = cnet(net, "dataset", "show", "corpus-r")
    assert "cnet://dataset/corpus-r@2" in both.stdout and "removed: 1 " in both.stdout
    as_json = json.loads(cnet(net, "dataset", "show", "--json", "corpus-r").stdout)
    assert [v["version"] for v in as_json["versions"]] == ["2"] and as_json["removed"] == ["1"]
    assert cnet(net, "dataset", "rm", "corpus-r@2").returncode == 0


def test_a_version_that_is_one_file_is_named_after_its_dataset(
    net: Network, tmp_path: Path
) -> None:
    one = tmp_path / "f1.txt"
    one.write_text("one\n")
    publish(net, one, "cnet://dataset/onefile", "pool-a")
    dest = tmp_path / "dest"
    dest.mkdir()
    got = cnet(net, "cp", "--json", "cnet://dataset/onefile", f"{dest}/")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["destination"] == str(dest / "onefile")
    assert [p.name for p in dest.iterdir()] == ["onefile"]
    assert (dest / "onefile").read_text() == "one\n"
    b = cpi(net, "pool-b")
    there = cnet(net, "cp", "cnet://dataset/onefile@1", f"{b}:/singles/")
    assert there.returncode == 0, there.stderr
    listed = cnet(net, "ls", "--json", f"{b}:/singles")
    assert [x.name for x in PoolListing.model_validate_json(listed.stdout).entries] == ["onefile"]
    listed = cnet(net, "ls", "--json", "cnet://dataset/onefile")
    assert [x.name for x in PoolListing.model_validate_json(listed.stdout).entries] == ["onefile"]
    inside = cnet(net, "ls", "cnet://dataset/onefile@1/x")
    assert inside.returncode == 1, inside.stderr
    assert (
        inside.stderr.strip()
        == "error: cnet://dataset/onefile@1 is one file: nothing lies inside it"
    )


def test_a_missing_output_or_input_fails_the_job_with_a_reason(net: Network) -> None:
    with net.client() as c:
        job = c.wait(
            c.submit(command=["true"], outputs=[{"path": "nothing", "uri": "cnet://dataset/x"}]).id,
            timeout=60,
        )
        assert job.state is JobState.FAILED
        assert "output nothing" in job.reason and "did not write it" in job.reason
        a = cpi(net, "pool-a")
        job = c.wait(
            c.submit(command=["true"], inputs=[{"uri": f"{a}:/no/such", "path": "x"}]).id,
            timeout=60,
        )
        assert job.state is JobState.FAILED
        assert "staging input" in job.reason
        assert "/no/such: no such file or directory in this pool" in job.reason, job.reason
        job = c.wait(  # a link to the agent's own files is never published
            c.submit(
                command=["ln", "-s", "/etc", "out"],
                outputs=[{"path": "out", "uri": "cnet://dataset/linked-out"}],
            ).id,
            timeout=60,
        )
        assert job.state is JobState.FAILED
        assert "'/out' leads out of the job's working directory through a link" in job.reason
        assert not any(d.name == "linked-out" for d in c.datasets())
        root = net.home / "agents" / "pool-a" / "data"
        (root / "afile").write_text("a file, not a directory\n")
        job = c.wait(  # its reason names the pool path, never the agent's own
            c.submit(
                command=["sh", "-c", "echo x > o"],
                pool=a,
                outputs=[{"path": "o", "uri": f"{a}:/afile/sub"}],
            ).id,
            timeout=60,
        )
        assert job.state is JobState.FAILED
        said = "a file stands where a directory must be on the way to it"  # not "Not a …"
        assert f"output o to {a}:/afile/sub: {said}" in job.reason, job.reason
        assert str(root) not in job.reason


def test_bad_input_is_refused_naming_the_field(net: Network, tmp_path: Path) -> None:
    headers = {"authorization": f"Bearer {net.token}"}
    cases = [
        ({"command": ["true"], "inputs": [{"uri": "cnet://dataset/x", "path": "../x"}]}, "path"),
        ({"command": ["true"], "inputs": [{"uri": "cnet://dataset/X!", "path": "x"}]}, "uri"),
        ({"command": ["true"], "inputs": [{"uri": "cnet://dataset/nope", "path": "x"}]}, "uri"),
        ({"command": ["true"], "outputs": [{"path": "/etc", "uri": "cnet://dataset/x"}]}, "path"),
    ]
    for body, leaf in cases:
        r = httpx.post(f"{net.url}/v1/jobs", json=body, headers=headers)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["field"].endswith(leaf), r.text
    two = [{"uri": "cnet://dataset/x", "path": p} for p in ("in", "in/sub")]
    r = httpx.post(f"{net.url}/v1/jobs", json={"command": ["true"], "inputs": two}, headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "inputs.1.path", r.text
    assert "inputs.0.path 'in': two inputs cannot land at one path" in r.json()["detail"]
    r = httpx.post(  # the other way round too
        f"{net.url}/v1/jobs", json={"command": ["true"], "inputs": two[::-1]}, headers=headers
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "inputs.1.path", r.text
    b = cpi(net, "pool-b")
    publish(net, corpus(tmp_path, "kept"), "cnet://dataset/corpus-kept", "pool-b")
    with net.client() as c:
        (v,) = c.dataset("corpus-kept").versions
    for path, status in (
        ("/.cnet/x", 422),
        ("/", 422),
        ("/x/../y", 422),
        ("/datasets", 409),
        (v.replicas[0].path + "/a.txt", 409),
    ):
        out = [{"path": "o", "uri": f"{b}:{path}"}]
        r = httpx.post(
            f"{net.url}/v1/jobs", json={"command": ["true"], "outputs": out}, headers=headers
        )
        assert r.status_code == status, (path, r.text)
        assert r.json()["errors"][0]["field"] == "outputs.0.uri", r.text
    batch = {"jobs": [cases[0][0] | {"inputs": [{"uri": "cnet://dataset/nope", "path": "x"}]}]}
    r = httpx.post(f"{net.url}/v1/jobs/batch", json=batch, headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "jobs.0.inputs.0.uri"
    a = cpi(net, "pool-a")
    bad = {"name": "Bad Name", "pool": a, "path": "/x", "tree_hash": "0" * 64}
    r = httpx.post(
        f"{net.url}/v1/datasets", json={**bad, "total_bytes": 1, "files": 1}, headers=headers
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"].endswith("name")
    good = {**bad, "name": "ok", "total_bytes": 1, "files": 1}
    r = httpx.post(f"{net.url}/v1/datasets", json={**good, "path": "/../x"}, headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path", r.text
    proc = cnet(net, "cp", "/etc/hostname", "cnet://dataset/Not Valid")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = cnet(net, "cp", "--pool", a, "/etc/hostname", f"{a}:/x")
    assert proc.returncode != 0 and "--pool" in proc.stderr and "Traceback" not in proc.stderr


def test_the_dataset_list_comes_in_pages_by_name(net: Network) -> None:
    headers = {"authorization": f"Bearer {net.token}"}
    a = cpi(net, "pool-a")
    names = [f"paged-{i}" for i in range(5)]
    for n in names:
        body = {"name": n, "pool": a, "tree_hash": "1" * 64}
        for version in ("1", "2"):
            r = httpx.post(
                f"{net.url}/v1/datasets",
                json={
                    **body,
                    "version": version,
                    "path": f"/paged/{n}/{version}",
                    "total_bytes": 1,
                    "files": 1,
                },
                headers=headers,
            )
            assert r.status_code == 201, r.text
    seen: list[tuple[str, str]] = []
    after: str | None = "paged-"
    while after is not None:
        r = httpx.get(
            f"{net.url}/v1/datasets", params={"limit": 2, "after": after}, headers=headers
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert len({v["name"] for v in page["items"]}) <= 2
        seen += [(v["name"], v["version"]) for v in page["items"] if v["name"] in names]
        after = page["next"]
    assert sorted(seen) == [(n, v) for n in names for v in ("1", "2")]
    r = httpx.get(f"{net.url}/v1/datasets", params={"limit": 0}, headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "limit"
    with net.client() as c:
        assert {(v.name, v.version) for v in c.datasets()} >= set(seen)


def test_locality_counts_the_seconds_the_bytes_would_take() -> None:
    spec = JobSpec(command=["true"], inputs=[{"uri": "cnet://dataset/d@1", "path": "d"}])
    held = {"cnet://dataset/d@1": (5 << 20, frozenset({"cpi:x:p/a", "cpi:x:p/e"}))}
    measured = {("cpi:x:p/a", "cpi:x:p/c"): 1e6, ("cpi:x:p/e", "cpi:x:p/c"): 4e6}
    ctx = Context(data=held.get, link_rate=lambda s, d: measured.get((s, d)))
    job = JobView("j-1", "t", None, None, 0, 0.0, inputs=tuple(i.uri for i in spec.inputs))  # type: ignore[arg-type]
    score = DataLocality()

    def pool(name: str) -> PoolView:
        return PoolView(f"cpi:x:p/{name}", "", {}, None, None, 0)  # type: ignore[arg-type]

    assert score.raw(job, pool("a"), ctx) == 0.0
    assert score.raw(job, pool("b"), ctx) == (5 << 20) / DEFAULT_RATE  # not measured
    assert score.raw(job, pool("c"), ctx) == (5 << 20) / 4e6  # the faster of two copies
    assert isinstance(parse_data_uri("cnet://dataset/d@1"), DatasetRef)


def test_a_link_measured_slow_loses_the_job_to_one_measured_fast(
    net: Network, tmp_path: Path
) -> None:
    """Two equal pools in one region, neither holding the input: the one whose fetches
    from the copy proved faster runs the job, though the other registered first and so
    would win the tie. The slow link is made slow for real, by that agent's own cap."""

    def config(name: str, region: str, cpus: int) -> Path:
        machine = {"name": name, "cpus": cpus, "memory_bytes": "4G", "devices": []}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"pool": name, "region": region, "machines": [machine]}))
        return path

    net.start_agent("store-s", "--config", str(config("store-s", "eu-north", 1)))
    net.start_agent("slow-c", "--config", str(config("slow-c", "eu-west", 2)), "--fetch-rate", "4M")
    net.start_agent("fast-d", "--config", str(config("fast-d", "eu-west", 2)))
    for tag in ("c", "d", "y"):  # each only in store-s: every fetch crosses a link from it
        data = tmp_path / f"link-{tag}"
        data.mkdir()
        (data / "blob").write_bytes(os.urandom(12 << 20))
        publish(net, data, f"cnet://dataset/link-{tag}", "store-s")
    s, c, d = cpi(net, "store-s"), cpi(net, "slow-c"), cpi(net, "fast-d")
    for pool, tag in ((c, "c"), (d, "d")):
        inputs = [{"uri": f"cnet://dataset/link-{tag}", "path": "in"}]
        where, _ = run(net, command=["true"], inputs=inputs, pool=pool)
        assert cpi(net, where) == pool
    with net.client() as cl:
        rates = {(k.source, k.destination): k for k in cl.links()}
    assert rates[(s, c)].samples == 1 and rates[(s, c)].rate <= 4.4e6  # the cap held
    assert rates[(s, d)].rate > 2 * rates[(s, c)].rate
    shown = net.cnet("pool", "links", token=net.token)
    assert shown.returncode == 0, shown.stderr
    row = next(line.split() for line in shown.stdout.splitlines() if c in line)
    assert row[:2] == [s, c] and float(row[2]) == round(rates[(s, c)].rate / 1e6, 1)
    assert row[3:5] == ["MB/s", "1"]
    as_json = json.loads(net.cnet("pool", "links", "--json", token=net.token).stdout)
    assert {(x["source"], x["destination"]) for x in as_json} == set(rates)
    y = [{"uri": "cnet://dataset/link-y", "path": "in"}]
    with net.client() as cl:
        plan = cl.plan(command=["true"], inputs=y, regions=["eu-west"])
    seconds = {p.pool: p.raw["locality"] for p in plan.candidates}
    assert seconds[c] > seconds[d] > 0, seconds
    where, _ = run(net, command=["true"], inputs=y, regions=["eu-west"])
    assert where == "fast-d"
    bad = net.cnet("agent", "run", "--node", net.url, "--token", "x", "--fetch-rate", "fast")
    assert bad.returncode == 2 and "--fetch-rate: invalid size 'fast'" in bad.stderr
    slow = net.cnet("agent", "run", "--node", net.url, "--token", "x", "--fetch-rate", "10K")
    assert slow.returncode == 2 and "--fetch-rate: 10K is under 1 MB a second" in slow.stderr


def test_a_job_canceled_while_staging_ends_canceled(net: Network, tmp_path: Path) -> None:
    """The only copy sits in a pool whose agent is frozen: the fetch hangs until cancel."""
    frozen = net.start_agent("pool-c", "--config", str(pool_config(tmp_path, "pool-c")))
    publish(net, corpus(tmp_path, "d"), "cnet://dataset/corpus-d", "pool-c")
    assert frozen.popen is not None
    frozen.popen.send_signal(signal.SIGSTOP)
    try:
        with net.client() as c:
            job = c.submit(
                command=["true"],
                pool=cpi(net, "pool-b"),
                inputs=[{"uri": "cnet://dataset/corpus-d", "path": "in"}],
            )
            deadline = time.monotonic() + 30
            while c.get(job.id).state is not JobState.STAGING:
                assert time.monotonic() < deadline, c.get(job.id)
                time.sleep(0.1)
            c.cancel(job.id)
            job = c.wait(job.id, timeout=15)
        assert job.state is JobState.CANCELED, job.reason
    finally:
        frozen.popen.send_signal(signal.SIGCONT)


def test_pool_paths_as_inputs_and_outputs(net: Network, tmp_path: Path) -> None:
    a, b = cpi(net, "pool-a"), cpi(net, "pool-b")
    (tmp_path / "note.txt").write_text("from a\n")
    assert cnet(net, "cp", str(tmp_path / "note.txt"), f"{a}:/inputs/note.txt").returncode == 0
    where, out = run(
        net,
        command=["sh", "-c", "cat note.txt && mkdir r && tr a-z A-Z < note.txt > r/up.txt"],
        pool=b,
        inputs=[{"uri": f"{a}:/inputs/note.txt", "path": "note.txt"}],
        outputs=[
            {"path": "r", "uri": f"{a}:/results/r1"},
            {"path": "r/up.txt", "uri": f"{b}:/results/up.txt"},
        ],
    )
    assert (where, out) == ("pool-b", "from a\n")
    data = net.home / "agents"
    assert (data / "pool-a" / "data" / "results" / "r1" / "up.txt").read_text() == "FROM A\n"
    assert (data / "pool-b" / "data" / "results" / "up.txt").read_text() == "FROM A\n"
    assert (data / "pool-a" / "data" / ".cnet").is_dir()  # its data server's records
    for pool in (a, b):  # linked in place, and fetched from the other pool
        where, out = run(
            net,
            command=["sh", "-c", "ls -A root"],
            pool=pool,
            inputs=[{"uri": f"{a}:/", "path": "root"}],
        )
        assert "inputs" in out.split() and ".cnet" not in out.split(), (where, out)


def _same(net: Network, uri: str, src: Path, tmp: Path) -> None:
    back = tmp / f"back-{len(list(tmp.iterdir()))}"
    proc = cnet(net, "cp", uri, str(back))
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run(["diff", "-r", str(src), str(back)]).returncode == 0


def test_nothing_writes_into_a_dataset_copy(net: Network, tmp_path: Path) -> None:
    """A version never changes: a put at, inside or (for the files it would land there)
    above a copy is refused, and so is a job output that would replace one."""
    src = corpus(tmp_path, "w")
    publish(net, src, "cnet://dataset/corpus-w", "pool-a")
    a = cpi(net, "pool-a")
    with net.client() as c:
        at = c.dataset("corpus-w").versions[0].replicas[0].path.strip("/")
    (tmp_path / "evil.txt").write_text("tampered\n")
    for target in (at, f"{at}/a.txt", f"{at}/"):
        proc = cnet(net, "cp", str(tmp_path / "evil.txt"), f"{a}:/{target}")
        assert proc.returncode == 1, proc.stdout
        assert "holds dataset corpus-w@1, and versions never change" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    over = tmp_path / "over" / at
    over.mkdir(parents=True)
    (over / "a.txt").write_text("tampered\n")
    beside = over.parent / f"{over.name}0"  # a name the copy's is a prefix of
    beside.mkdir()
    (beside / "n.txt").write_text("a note\n")
    proc = cnet(net, "cp", str(tmp_path / "over"), f"{a}:/")
    assert proc.returncode == 1
    assert f"this copy would write /{at}/a.txt" in proc.stderr
    listed = cnet(net, "ls", f"{a}:/{at}0")
    assert listed.returncode == 1 and "no such file or directory" in listed.stderr
    shutil.rmtree(over)
    proc = cnet(net, "cp", str(tmp_path / "over"), f"{a}:/")  # lands beside the copy: fine
    assert proc.returncode == 0, proc.stderr
    assert cnet(net, "ls", f"{a}:/{at}0/n.txt").returncode == 0
    root = {"pool": a, "path": "/", "tree_hash": "0" * 64}
    headers = {"authorization": f"Bearer {net.token}"}
    r = httpx.post(f"{net.url}/v1/datasets/corpus-w/1/replicas", json=root, headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path"
    for whole in ("/home", "/home/admin", "/datasets"):  # it would keep all of it from writes
        r = httpx.post(
            f"{net.url}/v1/datasets/corpus-w/1/replicas",
            json={**root, "path": whole},
            headers=headers,
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path", r.text
        made = {"name": "whole-w", "pool": a, "path": whole, "tree_hash": "0" * 64}
        r = httpx.post(
            f"{net.url}/v1/datasets", json={**made, "total_bytes": 1, "files": 1}, headers=headers
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path", r.text
    assert httpx.get(f"{net.url}/v1/datasets/whole-w", headers=headers).status_code == 404
    with net.client() as c:
        tree_hash = c.dataset("corpus-w").versions[0].tree_hash
    replicas = f"{net.url}/v1/datasets/corpus-w/1/replicas"
    second = {"pool": a, "path": f"/{at}0", "tree_hash": tree_hash}
    r = httpx.post(replicas, json=second, headers=headers)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "pool", r.text
    assert "one copy per pool" in r.json()["detail"]
    again = httpx.post(replicas, json={**second, "path": f"/{at}"}, headers=headers)
    assert again.status_code == 201 and len(again.json()["replicas"]) == 1
    inside = {"name": "inside-w", "pool": a, "path": f"/{at}/sub", "tree_hash": tree_hash}
    r = httpx.post(
        f"{net.url}/v1/datasets", json={**inside, "total_bytes": 1, "files": 1}, headers=headers
    )
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "path", r.text
    assert "a copy cannot lie at, inside or above another" in r.json()["detail"]

    with net.client() as c:  # refused at submission: the job would only fail once run
        for where in (at, "datasets/corpus-w"):
            out = [{"path": "o", "uri": f"{a}:/{where}"}]
            with pytest.raises(ApiError, match="holds dataset corpus-w@1") as refused:
                c.submit(command=["sh", "-c", "echo x > o"], pool=a, outputs=out)
            assert refused.value.status == 409
            assert refused.value.problem.errors[0].field == "outputs.0.uri"
    _same(net, "cnet://dataset/corpus-w@1", src, tmp_path)


def test_a_copy_changed_where_it_lies_is_refused_before_anything_lands(
    net: Network, tmp_path: Path
) -> None:
    src = corpus(tmp_path, "x")
    publish(net, src, "cnet://dataset/corpus-x@1", "pool-a")
    kept = net.home / "agents" / "pool-a" / "data" / "datasets" / "corpus-x" / "1"
    (kept / "a.txt").write_text("changed behind the data server's back\n")
    b = cpi(net, "pool-b")
    for dest in (str(tmp_path / "back"), f"{b}:/copies/x"):
        proc = cnet(net, "cp", "cnet://dataset/corpus-x@1", dest)
        assert proc.returncode == 1, proc.stdout
        assert "/datasets/corpus-x/1 has changed since it was recorded" in proc.stderr
        assert "nothing was copied" in proc.stderr
    assert not (tmp_path / "back").exists()
    listed = cnet(net, "ls", f"{b}:/copies/x")
    assert listed.returncode == 1 and "no such file or directory" in listed.stderr
    with net.client() as c:
        inputs = [{"uri": "cnet://dataset/corpus-x@1", "path": "in"}]
        job = c.wait(c.submit(command=["true"], pool=b, inputs=inputs).id, timeout=60)
    assert job.state is JobState.FAILED
    assert "has changed since it was recorded" in (job.reason or ""), job.reason
    assert not (net.home / "agents" / "pool-b" / "data" / "datasets" / "corpus-x" / "1").exists()


def test_a_ticket_granted_before_a_publish_cannot_write_into_the_copy(
    net: Network, tmp_path: Path
) -> None:
    """The data server asks the node which copies there are when a put starts, not
    when its ticket was granted."""
    a = cpi(net, "pool-a")
    src = corpus(tmp_path, "late")
    proc = cnet(net, "cp", "--json", str(src), f"{a}:/late/v1")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    ask = {"pool": a, "path": "/late", "direction": "put", "size": 1 << 20}
    headers = {"authorization": f"Bearer {net.token}"}
    r = httpx.post(f"{net.url}/v1/transfers", json=ask, headers=headers)
    grant = TransferGrant.model_validate(r.json())
    with net.client() as c:
        c.publish(
            {
                "name": "corpus-late",
                "version": "1",
                "pool": a,
                "path": "/late/v1",
                "tree_hash": done["tree_hash"],
                "total_bytes": done["total_bytes"],
                "files": 2,
            }
        )
    evil = tmp_path / "evil" / "v1"
    evil.mkdir(parents=True)
    (evil / "a.txt").write_text("tampered\n")
    with pytest.raises(TransferError, match=r"this copy would write /late/v1/a\.txt"):
        asyncio.run(transfer_client.put(grant, evil.parent))
    _same(net, "cnet://dataset/corpus-late@1", src, tmp_path)


def test_a_version_published_while_a_put_moves_is_kept_out_of_it(
    net: Network, tmp_path: Path
) -> None:
    """Checked again as the put commits: the put is refused, and what it had written
    (partial files, a directory it made inside the copy) is taken back."""
    a = cpi(net, "pool-a")
    src = corpus(tmp_path, "mid")
    proc = cnet(net, "cp", "--json", str(src), f"{a}:/mid/v1")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    late = tmp_path / "late" / "v1" / "new"
    late.mkdir(parents=True)
    (late / "x.bin").write_bytes(os.urandom(3 * CHUNK))
    env = dict(net.env, CNET_TOKEN=net.token, **{FAULTS: "stop:chunk=1"})
    args = ["cp", "--streams", "1", str(tmp_path / "late"), f"{a}:/mid"]
    copy = subprocess.Popen([*PYTHON, *args], env=env, stderr=subprocess.PIPE, text=True)
    root = net.home / "agents" / "pool-a" / "data"
    try:
        held_open(copy, "its first chunk")
        assert (root / "mid" / "v1" / "new" / ".x.bin.cnetpart").exists()
        with net.client() as c:
            c.publish(
                {
                    "name": "corpus-mid",
                    "version": "1",
                    "pool": a,
                    "path": "/mid/v1",
                    "tree_hash": done["tree_hash"],
                    "total_bytes": done["total_bytes"],
                    "files": 2,
                }
            )
    finally:
        copy.send_signal(signal.SIGCONT)
    _, err = copy.communicate(timeout=60)
    assert copy.returncode == 1
    assert "this copy would write /mid/v1/new/x.bin" in err, err
    assert not (root / "mid" / "v1" / "new").exists()
    _same(net, "cnet://dataset/corpus-mid@1", src, tmp_path)


def test_a_copy_a_job_wrote_to_is_fetched_afresh_or_refused(net: Network, tmp_path: Path) -> None:
    """Inputs are hard links to the pool's copy, read-only in the job's sandbox: a job
    that appends to one fails. A hand that changes the copy anyway is found out by the
    next job on that pool: the node forgets that copy, and the agent fetches another
    pool's in its stead, or the job fails, saying why."""
    a, b = cpi(net, "pool-a"), cpi(net, "pool-b")
    read = ["sh", "-c", "cat in/a.txt"]
    spoil = ["sh", "-c", "echo evil >> in/a.txt"]
    for tag, elsewhere in (("t", False), ("t2", True)):
        publish(net, corpus(tmp_path, tag), f"cnet://dataset/corpus-{tag}", "pool-a")
        uri = f"cnet://dataset/corpus-{tag}@1"
        if elsewhere:
            assert cnet(net, "cp", uri, f"{b}:/copies/{tag}").returncode == 0
        inputs = [{"uri": uri, "path": "in"}]
        assert run(net, command=read, pool=a, inputs=inputs) == ("pool-a", f"alpha {tag}\n")
        with net.client() as c:
            refused = c.wait(c.submit(command=spoil, pool=a, inputs=inputs).id, timeout=60)
            where = {r.pool: r.path for r in c.dataset(f"corpus-{tag}").versions[0].replicas}
        assert refused.state is JobState.FAILED, refused.reason
        root = net.home / "agents" / "pool-a" / "data"
        with open(root / where[a].strip("/") / "a.txt", "a") as f:
            f.write("evil\n")
        with net.client() as c:
            job = c.wait(c.submit(command=read, pool=a, inputs=inputs).id, timeout=60)
            held = {r.pool: r.path for r in c.dataset(f"corpus-{tag}").versions[0].replicas}
        if elsewhere:
            assert job.state is JobState.COMPLETE, job.reason
            with net.client() as c:
                out = "".join(x["data"] for x in c.logs(job.id) if x["stream"] == "stdout")
            assert out == f"alpha {tag}\n"
            assert held == {b: f"/copies/{tag}", a: f"/datasets/corpus-{tag}/1"}
            kept = net.home / "agents" / "pool-a" / "data" / "datasets" / f"corpus-{tag}"
            assert [p.name for p in kept.iterdir()] == ["1"]  # the spoiled copy is gone
        else:
            assert job.state is JobState.FAILED
            assert f"staging input {uri}" in (job.reason or ""), job.reason
            assert "has changed since it was recorded" in (job.reason or ""), job.reason
            assert "no other copy could be fetched" in (job.reason or ""), job.reason
            assert "no pool holds an intact copy" in (job.reason or ""), job.reason
            assert held == {}


def test_outputs_that_could_only_fail_are_refused_at_submission(
    net: Network, tmp_path: Path
) -> None:
    publish(net, corpus(tmp_path, "o"), "cnet://dataset/corpus-o", "pool-a")
    with net.client() as c:
        stranger = c.create_token("stranger-o", "stranger-o").secret
    out = [{"path": "o", "uri": "cnet://dataset/corpus-o"}]
    body = {"command": ["true"], "outputs": out}
    theirs = {"authorization": f"Bearer {stranger}"}
    mine = {"authorization": f"Bearer {net.token}"}
    twice = [{"path": "o", "uri": "cnet://dataset/fresh-o@v"}] * 2
    cases = [
        (body, theirs, 403, "outputs.0.uri", "belongs to tenant"),
        (
            {**body, "outputs": [{**out[0], "uri": "cnet://dataset/corpus-o@1"}]},
            mine,
            409,
            "outputs.0.uri",
            "versions never change",
        ),
        ({**body, "outputs": twice}, mine, 422, "outputs.1.uri", "outputs.0.uri is"),
    ]
    for b, headers, status, field, says in cases:
        r = httpx.post(f"{net.url}/v1/jobs", json=b, headers=headers)
        assert r.status_code == status, r.text
        assert r.json()["errors"][0]["field"] == field and says in r.json()["detail"]
        r = httpx.post(f"{net.url}/v1/jobs/batch", json={"jobs": [b]}, headers=headers)
        assert r.status_code == status and r.json()["errors"][0]["field"] == f"jobs.0.{field}"
    one = {"command": ["true"], "outputs": twice[:1]}
    r = httpx.post(f"{net.url}/v1/jobs/batch", json={"jobs": [one, one]}, headers=mine)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "jobs.1.outputs.0.uri"
    assert "jobs.0.outputs.0.uri is cnet://dataset/fresh-o@v" in r.json()["detail"]

    both = [
        {"path": "a", "uri": "cnet://dataset/pair-o"},
        {"path": "b", "uri": "cnet://dataset/pair-o"},
    ]
    run(net, command=["sh", "-c", "echo 1 > a && echo 2 > b"], outputs=both)
    with net.client() as c:
        versions = c.dataset("pair-o").versions
    assert sorted(v.version for v in versions) == ["1", "2"]
    assert len({v.tree_hash for v in versions}) == 2


def test_an_interrupted_publish_without_a_version_resumes(net: Network, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 * CHUNK))
    a = cpi(net, "pool-a")
    args = ["cp", "--json", "--streams", "1", "--pool", a, str(src), "cnet://dataset/resumed-u"]
    env = dict(net.env, CNET_TOKEN=net.token, **{FAULTS: "kill:chunk=2"})
    killed = subprocess.run([*PYTHON, *args], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    again = cnet(net, *args)
    assert again.returncode == 0, again.stderr
    r = TransferResult.model_validate_json(again.stdout)
    assert r.destination == "cnet://dataset/resumed-u@1" and r.counters.chunks_present >= 2
    assert r.counters.chunks + r.counters.chunks_present == 4
    later = cnet(net, *args)  # the same source again: a new version, in a place of its own
    assert later.returncode == 0, later.stderr
    with net.client() as c:
        versions = c.dataset("resumed-u").versions
    assert [v.version for v in versions] == ["2", "1"]
    one, two = (v.replicas[0].path for v in reversed(versions))
    assert two == f"{one}-2"
    for v in versions:
        _same(net, v.uri, src, tmp_path)


def test_a_version_keeps_no_partial_file_of_an_earlier_copy_cut_short(
    net: Network, tmp_path: Path
) -> None:
    """A copy to a named version killed midway leaves a partial file at the version's
    path; another tree published as that version must not hold it (unseen, taking space,
    and beyond `cnet rm` while the version stands)."""
    big = tmp_path / "big"
    big.mkdir()
    (big / "huge.bin").write_bytes(os.urandom(4 * CHUNK))
    a = cpi(net, "pool-a")
    uri = "cnet://dataset/cut-short@v2"
    args = ["cp", "--json", "--streams", "1", "--pool", a, str(big), uri]
    env = dict(net.env, CNET_TOKEN=net.token, **{FAULTS: "kill:chunk=2"})
    killed = subprocess.run([*PYTHON, *args], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    root = net.home / "agents" / "pool-a" / "data"
    assert [p.name for p in root.rglob("*.cnetpart")] == [".huge.bin.cnetpart"]
    other = corpus(tmp_path, "other")
    publish(net, other, uri, a)
    with net.client() as c:
        (v,) = c.dataset("cut-short").versions
    where = root / v.replicas[0].path.lstrip("/")
    assert sorted(p.name for p in where.rglob("*")) == ["a.txt", "b.bin", "sub"]
    _same(net, v.uri, other, tmp_path)


def test_a_publish_keeps_no_file_of_the_same_size_that_is_not_its_own(
    net: Network, tmp_path: Path
) -> None:
    """``--sync size`` passed over a file of the same size already at the version's path:
    the version was recorded with a tree hash its copy did not hold, and every later
    fetch refused it. A version's copy is checked by content, whatever the sync level."""
    a = cpi(net, "pool-a")
    mine, planted = tmp_path / "mine", tmp_path / "planted.bin"
    mine.mkdir()
    (mine / "b.bin").write_bytes(b"A" * 5000)
    planted.write_bytes(b"B" * 5000)
    there = cnet(net, "cp", str(planted), f"{a}:/datasets/sized/v1/b.bin")
    assert there.returncode == 0, there.stderr
    proc = cnet(
        net, "cp", "--json", "--sync", "size", "--pool", a, str(mine), "cnet://dataset/sized@v1"
    )
    assert proc.returncode == 0, proc.stderr
    assert TransferResult.model_validate_json(proc.stdout).counters.files == 1
    root = net.home / "agents" / "pool-a" / "data"
    assert (root / "datasets" / "sized" / "v1" / "b.bin").read_bytes() == b"A" * 5000
    _same(net, "cnet://dataset/sized@v1", mine, tmp_path)


def test_a_version_registered_at_the_wrong_path_leaves_that_paths_data_when_removed(
    net: Network, tmp_path: Path
) -> None:
    """Registering a tree vouches for it unread: one registered with a tree hash that is
    not what its path holds, whether a copy put the data there or not, and a copy changed
    by hand since, must not take that data with it when the version goes."""
    a = cpi(net, "pool-a")
    src = corpus(tmp_path, "vouched")
    for path in ("/trees/vouched", "/trees/vouched2", "/trees/edited"):
        put = cnet(net, "cp", "--json", str(src), f"{a}:{path}")
        assert put.returncode == 0, put.stderr
    real = json.loads(put.stdout)["tree_hash"]
    root = net.home / "agents" / "pool-a" / "data" / "trees"
    (root / "by-hand").mkdir()
    (root / "by-hand" / "k.txt").write_text("never copied, never recorded\n")
    sizes = {"total_bytes": 1 << 20, "files": 2}  # vouched for, not read
    with net.client() as c:
        for name, path, tree in (
            ("wrongly-vouched", "/trees/vouched", "0" * 64),
            ("rightly-vouched", "/trees/vouched2", real),
            ("unrecorded", "/trees/by-hand", real),
            ("edited", "/trees/edited", real),
        ):
            c.publish({"name": name, "pool": a, "path": path, "tree_hash": tree} | sizes)
        (root / "edited" / "a.txt").write_text("alpha, edited in place\n")
        wrong = c.remove_dataset("wrongly-vouched@1")
        right = c.remove_dataset("rightly-vouched@1")
        unrecorded = c.remove_dataset("unrecorded@1")
        edited = c.remove_dataset("edited@1")
    for removal, path in ((wrong, "vouched"), (unrecorded, "by-hand"), (edited, "edited")):
        assert not removal.removed and len(removal.left) == 1, removal
        assert f"/trees/{path} holds tree " in removal.left[0], removal.left
        assert "it is left in place" in removal.left[0] and "cnet rm" not in removal.left[0]
    assert "not the version's tree 000000000000… alone" in wrong.left[0]
    assert (root / "vouched" / "a.txt").read_text() == "alpha vouched\n"
    assert (root / "by-hand" / "k.txt").read_text() == "never copied, never recorded\n"
    assert (root / "edited" / "a.txt").read_text() == "alpha, edited in place\n"
    assert len(right.removed) == 1 and not (root / "vouched2").exists(), right


def test_a_copy_of_a_version_is_recorded_only_where_it_is_all_its_path_holds(
    net: Network, tmp_path: Path
) -> None:
    """A version copied into a directory in use, into a tenant's home itself, or by a
    tenant that does not own it lands and is not recorded: recorded, it would be kept
    from writes and removed with the version, and the files beside it with it."""
    publish(net, corpus(tmp_path, "m"), "cnet://dataset/corpus-m", "pool-a")
    b = cpi(net, "pool-b")
    mine = tmp_path / "mine"
    (mine / "keep").mkdir(parents=True)
    (mine / "keep" / "p.txt").write_text("precious\n")
    assert cnet(net, "cp", str(mine), f"{b}:/merge").returncode == 0
    merged = cnet(net, "cp", "--json", "cnet://dataset/corpus-m@1", f"{b}:/merge")
    assert merged.returncode == 0, merged.stderr
    again = cnet(net, "cp", "cnet://dataset/corpus-m@1", f"{b}:/merge")
    assert "holds other files too: the copy is yours, not recorded" in again.stderr
    result = json.loads(merged.stdout)
    assert result["merged"] is True and result["replica_of"] is None, result
    home = cnet(net, "cp", "--json", "cnet://dataset/corpus-m@1", f"{b}:/home/admin/")
    assert home.returncode == 0, home.stderr
    assert json.loads(home.stdout)["replica_of"] is None
    alone = cnet(net, "cp", "--json", "cnet://dataset/corpus-m@1", f"{b}:/alone")
    assert json.loads(alone.stdout)["merged"] is False
    assert json.loads(alone.stdout)["replica_of"] == "cnet://dataset/corpus-m@1"

    with net.client() as c:
        reader = c.create_token("reader-m", "reader-m").secret
    env = dict(net.env, CNET_TOKEN=reader)
    theirs = subprocess.run(
        [*PYTHON, "cp", "--json", "cnet://dataset/corpus-m@1", f"{b}:/home/reader-m/c"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert theirs.returncode == 0, theirs.stderr  # every tenant reads every dataset
    assert json.loads(theirs.stdout)["replica_of"] is None
    with net.client() as c:
        (v,) = c.dataset("corpus-m").versions
    assert {(r.pool, r.path.rstrip("/")) for r in v.replicas if r.pool == b} == {(b, "/alone")}

    data = net.home / "agents" / "pool-b" / "data"
    (data / "alone" / "beside.txt").write_text("written by hand beside the copy\n")
    gone = cnet(net, "dataset", "rm", "--json", "corpus-m@1")
    assert gone.returncode == 1 and "beside.txt" in gone.stderr, gone.stderr
    assert "besides the version's copy, not the version's tree" in gone.stderr
    assert "alone: it is left in place" in gone.stderr
    assert "cnet rm -r" not in gone.stderr  # which would take the file beside it too
    assert (data / "merge" / "keep" / "p.txt").read_text() == "precious\n"
    assert (data / "merge" / "a.txt").exists() and (data / "alone" / "beside.txt").exists()
    assert (data / "home" / "reader-m" / "c" / "a.txt").exists()


def test_removing_a_version_whose_copy_is_gone_already_succeeds(
    net: Network, tmp_path: Path
) -> None:
    a = cpi(net, "pool-a")
    with net.client() as c:
        c.publish(
            {"name": "never-there", "pool": a, "path": "/home/admin/nothere"}
            | {"total_bytes": 1, "files": 1, "tree_hash": "0" * 64}
        )
    proc = cnet(net, "dataset", "rm", "never-there@1")
    assert proc.returncode == 0, proc.stderr
    assert f"{a}:/home/admin/nothere  (gone already)" in proc.stdout


def test_a_copy_removed_by_hand_is_passed_over_and_named_when_none_is_left(
    net: Network, tmp_path: Path
) -> None:
    """The node names copies it cannot see go: a copy of the version comes from another
    pool's copy (pool to pool too, where the destination's own copy is the gone one),
    and with none left the error names the version and where its copies were, not a
    path under a data root."""
    src = corpus(tmp_path, "hand")
    publish(net, src, "cnet://dataset/corpus-hand", "pool-a")
    uri = "cnet://dataset/corpus-hand@1"
    a, b = cpi(net, "pool-a"), cpi(net, "pool-b")
    copied = cnet(net, "cp", "--json", uri, f"{b}:/copies/hand")
    assert json.loads(copied.stdout)["replica_of"] == uri, copied.stderr
    with net.client() as c:
        (v,) = c.dataset("corpus-hand").versions
    at_a = next(r.path for r in v.replicas if r.pool == a)
    agents = net.home / "agents"
    shutil.rmtree(agents / "pool-b" / "data" / "copies" / "hand")
    again = cnet(net, "cp", uri, f"{b}:/again")  # pool-b's own copy first: gone
    assert again.returncode == 0, again.stderr
    assert (agents / "pool-b" / "data" / "again" / "a.txt").read_text() == "alpha hand\n"
    _same(net, uri, src, tmp_path)
    listed = cnet(net, "ls", uri)
    assert listed.returncode == 0 and "a.txt" in listed.stdout, listed.stderr
    shutil.rmtree(agents / "pool-a" / "data" / at_a.strip("/"))
    for args in (("cp", uri, str(tmp_path / "none")), ("ls", uri), ("ls", f"{uri}/sub")):
        proc = cnet(net, *args)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"{uri}: its copies in " in proc.stderr and " gone (removed by hand?)" in proc.stderr
        assert f"{a}:{at_a}" in proc.stderr and f"{b}:/copies/hand" in proc.stderr
        assert "cnet dataset rm corpus-hand@1" in proc.stderr, proc.stderr
    assert not (tmp_path / "none").exists()


def test_a_copy_whose_record_cannot_be_read_goes_by_what_it_holds(
    net: Network, tmp_path: Path
) -> None:
    """A record cut short (a full disk, a crash) or garbled says nothing of what the copy
    holds: removing the version reads the copy itself, and takes it where it is the
    version's tree."""
    b = cpi(net, "pool-b")
    data = net.home / "agents" / "pool-b" / "data"
    for tag, spoil in (
        ("cut", lambda x: x[:-40]),
        ("garbled", lambda x: x[:100] + b"#" + x[101:]),
    ):
        publish(net, corpus(tmp_path, tag), f"cnet://dataset/corpus-{tag}", "pool-a")
        uri = f"cnet://dataset/corpus-{tag}@1"
        copied = cnet(net, "cp", "--json", uri, f"{b}:/copies/{tag}")
        assert json.loads(copied.stdout)["replica_of"] == uri, copied.stderr
        record = records.location(data, f"copies/{tag}")
        record.write_bytes(spoil(record.read_bytes()))
        gone = cnet(net, "dataset", "rm", f"corpus-{tag}@1")
        assert gone.returncode == 0, gone.stderr
        assert f"{b}:/copies/{tag}" in gone.stdout and "Traceback" not in gone.stderr
        assert not (data / "copies" / tag).exists() and not record.exists()


def test_a_pool_goes_by_its_name_in_the_sdk_and_in_job_files(net: Network, tmp_path: Path) -> None:
    """``cnet cp --pool pool-b`` took the name; ``Client.copy(pool=...)``, a job file's
    ``pool:`` and ``cnet pool show`` did not, each with a misleading error."""
    src = corpus(tmp_path, "named")
    b = cpi(net, "pool-b")
    with net.client() as c:
        r = c.copy(str(src), "cnet://dataset/by-name", pool="pool-b")
        assert r.destination == "cnet://dataset/by-name@1"
        assert [x.pool for x in c.dataset("by-name").versions[0].replicas] == [b]
        with pytest.raises(TransferError, match="pool 'nosuch': no pool is named so"):
            c.copy(str(src), "cnet://dataset/by-name", pool="nosuch")
    spec = tmp_path / "job.yaml"
    spec.write_text("command: [echo, named]\npool: pool-b\n")
    ran = cnet(net, "submit", str(spec))
    assert ran.returncode == 0 and ran.stdout == "named\n", ran.stderr
    with net.client() as c:
        assert c.list(limit=1).items[0].pool == b
    spec.write_text("command: [echo, named]\npool: pool-z\n")
    bad = cnet(net, "submit", str(spec))
    assert bad.returncode == 2 and f"{spec}: pool 'pool-z': no pool is named so" in bad.stderr
    shown = cnet(net, "pool", "show", "pool-b")
    assert shown.returncode == 0 and json.loads(shown.stdout)["cpi"] == b, shown.stderr


def test_copying_a_version_again_to_its_recorded_copy_moves_nothing(
    net: Network, tmp_path: Path
) -> None:
    """Run again, as scripts do, it failed: 'X and X are the same path'."""
    publish(net, corpus(tmp_path, "again"), "cnet://dataset/again", "pool-a")
    b = cpi(net, "pool-b")
    args = ["cp", "--json", "cnet://dataset/again@1", f"{b}:/shared/again"]
    first = cnet(net, *args)
    assert first.returncode == 0, first.stderr
    assert TransferResult.model_validate_json(first.stdout).replica_of == "cnet://dataset/again@1"
    again = cnet(net, *args)
    assert again.returncode == 0, again.stderr
    r = TransferResult.model_validate_json(again.stdout)
    assert (r.counters.bytes, r.counters.files, r.counters.files_skipped) == (0, 0, 2)
    assert r.replica_of == "cnet://dataset/again@1"


def test_run_takes_inputs_and_outputs_without_a_job_file(net: Network, tmp_path: Path) -> None:
    """A data job needed a YAML file: ``cnet run`` had no --input or --output."""
    publish(net, corpus(tmp_path, "flags"), "cnet://dataset/flags-in", "pool-a")
    ran = cnet(
        net, "run", "--input", "in=cnet://dataset/flags-in", "--output",
        "out.txt=cnet://dataset/flags-out", "--", "sh", "-c", "tr a-z A-Z < in/a.txt > out.txt",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    back = tmp_path / "flags-back.txt"
    got = cnet(net, "cp", "cnet://dataset/flags-out@1", str(back))
    assert got.returncode == 0 and back.read_text() == "ALPHA FLAGS\n", got.stderr
    bad = cnet(net, "run", "--input", "cnet://dataset/flags-in", "--", "true")
    assert bad.returncode == 2 and "--input 'cnet://dataset/flags-in': expected PATH=URI" in (
        bad.stderr
    )


def test_a_job_waits_for_its_datas_pool_to_come_back(net: Network, tmp_path: Path) -> None:
    """Its only copy on a pool that stopped, the job was placed on another pool and
    failed at staging; now it waits, saying for what, and runs once the pool is back."""
    publish(net, corpus(tmp_path, "away"), "cnet://dataset/away", "pool-a")
    a = cpi(net, "pool-a")
    agent = net.agents["pool-a"]
    agent.kill()
    with net.client() as c:
        deadline = time.monotonic() + 30
        while c.pool(a).status is PoolStatus.online and time.monotonic() < deadline:
            time.sleep(0.2)
        job = c.submit(
            command=["cat", "in/a.txt"], inputs=[{"uri": "cnet://dataset/away", "path": "in"}]
        )
        deadline = time.monotonic() + 20
        while "no online pool holds" not in (c.get(job.id).reason or ""):
            assert time.monotonic() < deadline, c.get(job.id)
            time.sleep(0.2)
        waiting = c.get(job.id)
        assert waiting.state is JobState.QUEUED
        assert "no online pool holds cnet://dataset/away@1" in (waiting.reason or "")
        agent.start()  # back, with its identity and its copy
        done = c.wait(job.id, timeout=90)
        assert done.state is JobState.COMPLETE and done.pool == a, done.reason
        assert "".join(ch["data"] for ch in c.logs(job.id)) == "alpha away\n"
