"""The foundation's user journey through the CLI and the SDK, with real node and agent
processes: run, exit codes, ps, logs, time limits, cancel, and the process trees behind them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from computenet import AsyncClient, JobFailed
from computenet.agent.backends import Outcome, Task
from computenet.agent.backends.local import LocalBackend
from computenet.model import Job, JobSpec, JobState
from computenet.sdk import ApiError
from conftest import PYTHON, Network

pytestmark = pytest.mark.slow


def test_run_prints_output_and_exits_zero(shared: Network) -> None:
    r = shared.cnet("run", "--", "python3", "-c", "print(6*7)")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "42\n"


def test_run_propagates_exit_code(shared: Network) -> None:
    r = shared.cnet("run", "--", "sh", "-c", "exit 3")
    assert r.returncode == 3
    assert "Traceback" not in r.stderr


def test_run_separates_stdout_and_stderr(shared: Network) -> None:
    r = shared.cnet("run", "--", "sh", "-c", "echo out; echo err >&2")
    assert r.returncode == 0
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"


def test_ps_lists_jobs_with_state_pool_and_times(shared: Network) -> None:
    ok = shared.cnet("run", "--name", "ps-ok", "--", "true")
    bad = shared.cnet("run", "--name", "ps-bad", "--", "sh", "-c", "exit 3")
    assert (ok.returncode, bad.returncode) == (0, 3)
    r = shared.cnet("ps", "--limit", "50")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[1]: line for line in r.stdout.splitlines() if "ps-" in line}
    pool = shared.wait_pool("alpha")
    assert "COMPLETE" in rows["ps-ok"] and pool in rows["ps-ok"]
    assert "FAILED" in rows["ps-bad"] and " 3 " in rows["ps-bad"] and pool in rows["ps-bad"]
    assert "ago" in rows["ps-ok"]  # submission time is shown
    as_json = shared.cnet("ps", "--limit", "50", "--json")
    jobs = [Job.model_validate_json(line) for line in as_json.stdout.splitlines()]
    named = {j.name: j for j in jobs}
    assert (named["ps-ok"].state, named["ps-bad"].exit_code) == (JobState.COMPLETE, 3)


def test_show_tells_a_job_in_full(shared: Network) -> None:
    r = shared.cnet("run", "--mem", "64M", "--pool", "alpha", "--", "true")
    assert r.returncode == 0, r.stderr
    with shared.client() as c:
        job = c.list(limit=1).items[0]
    shown = shared.cnet("show", job.id)
    assert shown.returncode == 0, shown.stderr
    assert "COMPLETE" in shown.stdout and "64.0 MiB memory" in shown.stdout, shown.stdout
    r = shared.cnet("run", "--pool", "no-such-pool", "--", "true")
    assert r.returncode == 2 and "no pool is named so" in r.stderr, r.stderr


def test_command_not_found_is_127_with_reason(shared: Network) -> None:
    r = shared.cnet("run", "--", "no-such-program-here")
    assert r.returncode == 127
    assert "command not found" in r.stderr


def test_job_environment_names_job_and_hides_agent_secrets(shared: Network) -> None:
    r = shared.cnet(
        "run",
        "--cpus",
        "0.5",
        "-e",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        'echo "$CNET_JOB_ID $CNET_CPUS $GREETING ${CNET_TOKEN:-none}"',
    )
    assert r.returncode == 0, r.stderr
    job_id, cpus, greeting, token = r.stdout.split()
    assert job_id.startswith("j-") and cpus == "0.5" and greeting == "hi"
    assert token == "none"


LOOK = """
import json, os, sys
def listed(p):
    try:
        return sorted(os.listdir(p))
    except OSError as e:
        return type(e).__name__
def writes(p):
    try:
        open(os.path.join(p, "planted"), "w").close()
        return True
    except OSError:
        return False
print(json.dumps({
    "listed": {p: listed(p) for p in sys.argv[1:]},
    "writes": {p: writes(p) for p in [*sys.argv[1:], sys.prefix, "/etc"]},
    "beside": os.path.exists(os.environ["BESIDE"]),
    "cwd": os.getcwd(),
    "own": listed("."),
    "procs": len([x for x in os.listdir("/proc") if x.isdigit()]),
}))
"""


def test_a_job_sees_none_of_computenets_own_files(shared: Network, tmp_path: Path) -> None:
    """A local job runs as the agent's user, yet what belongs to computenet on the machine
    is not there for it: the admin's credentials, the node's database, the agent's key,
    other jobs' directories and every tenant's files in the pool's data root."""
    agent = shared.home / "agents" / "alpha"
    private = [shared.home / "config", shared.home / "data", agent, agent / "data", agent / "jobs"]
    assert shared.cnet("run", "--", "true").returncode == 0  # another job's directory
    assert (shared.home / "config" / "credentials.json").is_file()
    assert (agent / "identity").exists() and any((agent / "jobs").iterdir())
    beside = tmp_path / "beside.txt"  # in the machine's /tmp
    beside.write_text("another user's file\n")
    r = shared.cnet(
        "run", "-e", f"BESIDE={beside}", "--", "python3", "-c", LOOK, *map(str, private)
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    workdir = Path(seen["cwd"])
    assert workdir.parent == agent / "jobs" and workdir.name.startswith("j-")
    assert {"assignment.json", "stdout", "stderr"} <= set(seen["own"])
    assert seen["listed"] == {
        str(shared.home / "config"): [],
        str(shared.home / "data"): [],
        str(agent): ["jobs"],
        str(agent / "data"): "FileNotFoundError",
        str(agent / "jobs"): [workdir.name],
    }
    assert not any(seen["writes"].values()), seen["writes"]  # nor the machine's files
    assert not seen["beside"]  # a /tmp of its own
    assert seen["procs"] <= 3  # its own: none of the machine's other processes
    assert not any(p.name == "planted" for d in private if d.is_dir() for p in d.iterdir())
    # outside, everything is where it was
    assert (shared.home / "config" / "credentials.json").is_file()
    assert (workdir / "stdout").is_file()


def test_a_killed_job_in_its_sandbox_says_which_signal(shared: Network) -> None:
    r = shared.cnet("run", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 143, r.stderr
    with shared.client() as c:
        job = c.list(limit=1).items[0]
        assert (job.state, job.reason) == (JobState.FAILED, "killed by SIGTERM")
        with pytest.raises(JobFailed) as info:
            c.run(["sh", "-c", "exit 130"])  # a code of its own, though it reads like SIGINT's
    assert (info.value.job.exit_code, info.value.job.reason) == (130, "exit code 130")


def test_an_attached_run_ended_by_sigterm_cancels_its_job(shared: Network) -> None:
    """``timeout 60 cnet run …`` or a batch system ending the shell: the job is canceled,
    not left to run (or queue) with nobody attached."""
    attached = subprocess.Popen(
        [*PYTHON, "run", "--", "sh", "-c", "echo ready; sleep 60"],
        env=shared.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert attached.stdout is not None and attached.stdout.readline() == "ready\n"
    attached.send_signal(signal.SIGTERM)
    assert attached.wait(30) == 143
    with shared.client() as c:
        job = c.list(limit=1).items[0]
        assert c.wait(job.id, timeout=30).state is JobState.CANCELED


def test_a_canceled_job_has_its_grace_to_clean_up(shared: Network) -> None:
    clean = "trap 'sleep 1; echo cleaned; exit 3' TERM; echo ready; sleep 60 & wait"
    r = shared.cnet("run", "-d", "--", "sh", "-c", clean)
    job_id = r.stdout.strip()
    with shared.client() as c:
        deadline = time.monotonic() + 20
        while "ready" not in "".join(x["data"] for x in c.logs(job_id)):
            assert time.monotonic() < deadline, c.get(job_id)
            time.sleep(0.1)
        assert shared.cnet("cancel", job_id).returncode == 0
        job = c.wait(job_id, timeout=30)
        out = "".join(x["data"] for x in c.logs(job_id))
    assert job.state is JobState.CANCELED
    assert "cleaned" in out, out


def test_an_agent_asked_for_a_sandbox_it_cannot_have_does_not_start(
    shared: Network, tmp_path: Path
) -> None:
    """Where bubblewrap is missing, ``sandbox=on`` refuses to run jobs at all rather than
    run them unconfined; a setting that is not a mode is refused by name."""
    bare = tmp_path / "bin"
    bare.mkdir()
    env = dict(shared.env, PATH=str(bare))
    base = [*PYTHON, "agent", "run", "--node", shared.url, "--token", shared.token]
    base += ["--state-dir", str(tmp_path / "agent"), "--no-calibrate"]
    for option, words in (
        ("sandbox=on", "bwrap"),
        ("sandbox=maybe", "auto, on, off"),
        ("user=no-such-user-here", "no such user"),
        ("user=", "expected a user's name or uid"),
        ("user=nobody", "bwrap" if os.geteuid() == 0 else "only an agent running as root"),
    ):
        r = subprocess.run(
            [*base, "--pool", "boxless", "--option", option],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode != 0, r.stdout
        assert "Traceback" not in r.stderr and words in r.stderr, r.stderr
    with shared.client() as c:
        assert "boxless" not in {p.name for p in c.pools()}


AS_USER = r"""
id -u; id -g
cat in/secret.txt
echo mine > out.txt && mkdir -p made/deeper && echo x > made/deeper/y && echo made
echo t > "$TMPDIR/t" && echo t > /tmp/t && echo s > /dev/shm/s && echo scratch
head -c 1 /etc/shadow >/dev/null 2>&1 && echo SHADOW-READ || echo shadow-refused
echo no >> in/secret.txt 2>/dev/null && echo INPUT-WRITTEN || echo input-refused
python3 -c 'import os; print("python", os.getuid())'
echo "$USER $LOGNAME $HOME"
"""


@pytest.mark.skipif(
    os.geteuid() != 0, reason="LOUD SKIP: only a root agent runs jobs as another user"
)
def test_a_root_agents_jobs_run_as_the_user_it_names(network: Network, tmp_path: Path) -> None:
    """``--option user=nobody``: the job is that user (uid, groups, ``USER``), reads its
    staged input though the file was 0600 root's, writes in its own directory and its
    scratch places (by their full paths, though the agent's state lies in a directory
    closed to it), runs Python, and reads none of root's files; a time limit still ends
    its tree. The agent's state is closed to the machine's other users."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    (network.home / "agents").mkdir(mode=0o700)
    network.start_agent("as-nobody", "--no-calibrate", "--option", "user=nobody")
    assert (network.home / "agents" / "as-nobody").stat().st_mode & 0o077 == 0
    pool = network.wait_pool("as-nobody")
    secret = tmp_path / "secret.txt"
    secret.write_text("for the job only\n")
    secret.chmod(0o600)
    r = network.cnet("cp", "--pool", pool, str(secret), "cnet://dataset/as-nobody-in")
    assert r.returncode == 0, r.stderr
    with network.client() as c:
        job = c.wait(
            c.submit(
                command=["sh", "-c", AS_USER],
                pool=pool,
                inputs=[{"uri": "cnet://dataset/as-nobody-in", "path": "in/secret.txt"}],
            ).id,
            timeout=60,
        )
        logs = list(c.logs(job.id))
    out = "".join(x["data"] for x in logs if x["stream"] == "stdout")
    out += "".join("\n" + x["data"] for x in logs if x["stream"] == "stderr")  # why, if any
    assert job.state is JobState.COMPLETE, (job.reason, out)
    lines = out.split("\n\n")[0].splitlines()
    assert lines[:2] == [str(nobody.pw_uid), str(nobody.pw_gid)], out
    assert lines[2:-1] == [
        "for the job only", "made", "scratch", "shadow-refused", "input-refused",
        f"python {nobody.pw_uid}",
    ], out  # fmt: skip
    user, logname, home = lines[-1].split()
    assert (user, logname) == ("nobody", "nobody") and home.endswith(f"/{job.id}.1"), out
    marker = "sleep 173"
    r = network.cnet(  # the pool by its name
        "run", "--pool", "as-nobody", "--time", "2s", "--", "sh", "-c", f"{marker} & {marker}"
    )  # fmt: skip
    assert r.returncode != 0 and "time limit of 2s exceeded" in r.stderr, r.stderr
    assert _tree_gone(marker)


def _tree_gone(marker: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [
            p
            for p in psutil.process_iter(["cmdline"])
            if marker in " ".join(p.info["cmdline"] or [])
        ]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_time_limit_kills_the_whole_tree_and_says_why(shared: Network) -> None:
    marker = "sleep 171"
    start = time.monotonic()
    r = shared.cnet("run", "--time", "2s", "--", "sh", "-c", f"{marker} & {marker}; echo never")
    assert time.monotonic() - start < 15
    assert r.returncode != 0
    assert "never" not in r.stdout
    assert "time limit of 2s exceeded" in r.stderr
    assert _tree_gone(marker)
    with shared.client() as c:
        job = c.list(limit=1).items[0]
    assert job.state is JobState.FAILED
    assert job.reason == "time limit of 2s exceeded"


def test_cancel_kills_running_tree(shared: Network) -> None:
    marker = "sleep 173"
    r = shared.cnet("run", "-d", "--", "sh", "-c", f"{marker} & {marker} & wait")
    job_id = r.stdout.strip()
    with shared.client() as c:
        deadline = time.monotonic() + 20
        while c.get(job_id).state is not JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let the shell start both children
        assert not _tree_gone(marker, timeout=0.1)
        r = shared.cnet("cancel", job_id)
        assert r.returncode == 0, r.stderr
        assert "CANCELED" in r.stdout
        assert _tree_gone(marker)
        assert c.get(job_id).state is JobState.CANCELED


def test_cancel_queued_job_never_runs(shared: Network) -> None:
    with shared.client() as c:
        # Fill the pool, then queue one more and cancel it before it can start.
        pool = c.pools()[0]
        blocker = c.submit(command=["sleep", "30"], resources={"cpus": pool.capacity.cpus})
        queued = c.submit(command=["sh", "-c", "echo ran"])
        assert c.get(queued.id).state is JobState.QUEUED
        deadline = time.monotonic() + 15  # a job waiting on a full network says why
        while not (reason := c.get(queued.id).reason) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get(queued.id).state is JobState.QUEUED
        assert "no pool online has a CPU free" in reason or "waiting for cpi:" in reason, reason
        assert c.cancel(queued.id).state is JobState.CANCELED
        c.cancel(blocker.id)
        assert c.wait(blocker.id, timeout=20).state is JobState.CANCELED
        assert list(c.logs(queued.id)) == []


def test_cancel_of_several_goes_past_an_unknown_id(shared: Network) -> None:
    """As scancel does: the jobs that exist are canceled, the unknown id is named, and the
    command exits 1."""
    with shared.client() as c:
        a = c.submit(command=["sleep", "60"])
        b = c.submit(command=["sleep", "60"])
    r = shared.cnet("cancel", a.id, "j-zzzz", b.id)
    assert r.returncode == 1, r.stdout
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: j-zzzz: ") and "no job" in r.stderr
    with shared.client() as c:
        assert c.get(a.id).state is JobState.CANCELED
        assert c.get(b.id).state is JobState.CANCELED
        assert {j.id for j in c.list(state=["CANCELED"]).items} >= {a.id, b.id}  # by name


def test_listings_show_a_job_on_one_line_as_typed(shared: Network) -> None:
    """A command across lines broke the table into several rows, and brackets in a name
    were read as markup (``[/x]`` stopped the command with an error)."""
    with shared.client() as c:
        odd = c.submit(command=["python3", "-c", "import sys\nprint(1)"], name="[/x] [red]y")
        plain = c.submit(command=["sh", "-c", "echo 1\necho 2"])
        c.wait(odd.id, timeout=60)
        c.wait(plain.id, timeout=60)
    ps = shared.cnet("ps", "--limit", "2")
    assert ps.returncode == 0, ps.stderr
    rows = ps.stdout.strip().splitlines()
    assert len(rows) == 3, ps.stdout  # a header and a row per job
    assert "[/x] [red]y" in ps.stdout and "sh -c echo 1 echo 2" in ps.stdout
    show = shared.cnet("show", odd.id)
    assert show.returncode == 0 and "[/x] [red]y" in show.stdout, show.stderr


def test_every_tenants_jobs_need_the_admin(shared: Network) -> None:
    with shared.client() as admin:
        secret = admin.create_token("peeker", "peeker").secret
    r = shared.cnet("ps", "--all", token=secret)
    assert r.returncode == 1 and "needs the admin role" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_logs_follow_streams_while_running(shared: Network) -> None:
    with shared.client() as c:
        job = c.submit(command=["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done"])
        text = "".join(ch["data"] for ch in c.logs(job.id, follow=True))
        assert text == "line1\nline2\nline3\n"
        assert c.get(job.id).state is JobState.COMPLETE
    r = shared.cnet("logs", job.id)
    assert r.stdout == "line1\nline2\nline3\n"


def test_large_output_arrives_whole(shared: Network) -> None:
    n = 200_000
    r = shared.cnet("run", "--", "python3", "-c", f"import sys; sys.stdout.write('é' * {n})")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "é" * n


def test_submit_yaml_file(shared: Network, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: from-file\ncommand: [sh, -c, 'echo $WHO']\nenv: {WHO: yaml}\n"
        "resources: {cpus: 1, memory: 64M, time: 1m}\n"
    )
    r = shared.cnet("submit", str(spec))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "yaml\n"
    with shared.client() as c:
        job = c.list(name="from-file").items[0]
    assert job.spec.resources.memory == 64 * 2**20
    assert job.spec.resources.time == 60


def test_sdk_run_and_usage_fields(shared: Network) -> None:
    with shared.client() as c:
        job = c.run(["python3", "-c", "print(1)"])
        assert job.state is JobState.COMPLETE and job.exit_code == 0
        assert job.started_at is not None and job.ended_at is not None
        assert job.created_at <= job.started_at <= job.ended_at
        assert [a.number for a in job.attempts] == [1]
        assert job.attempts[0].pool == job.pool
        with pytest.raises(JobFailed) as info:
            c.run(["sh", "-c", "exit 5"])
        assert info.value.job.exit_code == 5


def test_the_sandbox_reports_the_jobs_own_usage(tmp_path: Path) -> None:
    """What an attempt used is the job's, measured inside its sandbox, not bwrap's."""
    backend = LocalBackend(pin=False, sandbox="on")
    spec = JobSpec(command=["python3", "-c", "b = bytearray(100 << 20); sum(range(10**7))"])
    task = Task("j-usage", 1, "t", spec, [], tmp_path / "jobs" / "j-usage.1")
    task.env = {"PATH": os.environ["PATH"]}

    async def run() -> Outcome:
        await backend.open(tmp_path, (tmp_path / "jobs",))
        await backend.start(task)
        return await backend.wait(task)

    outcome = asyncio.run(run())
    assert outcome.state is JobState.COMPLETE, outcome.reason
    assert outcome.usage.max_rss_bytes >= 100 << 20
    assert outcome.usage.cpu_seconds > 0.1


def test_async_client_runs_many_jobs(shared: Network) -> None:
    async def main() -> list[JobState]:
        async with AsyncClient(shared.url, shared.token) as c:
            jobs = await asyncio.gather(
                *(c.submit(command=["true"], resources={"cpus": 0.25}) for _ in range(20))
            )
            done = await asyncio.gather(*(c.wait(j.id) for j in jobs))
            return [j.state for j in done]

    assert asyncio.run(main()) == [JobState.COMPLETE] * 20


def test_list_pages_with_cursor(shared: Network) -> None:
    with shared.client() as c:
        for _ in range(5):
            c.submit(command=["true"], name="page-me", resources={"cpus": 0.1})
        first = c.list(name="page-me", limit=2)
        second = c.list(name="page-me", limit=2, cursor=first.next)
        third = c.list(name="page-me", limit=2, cursor=second.next)
        ids = [j.id for j in first.items + second.items + third.items]
        assert len(ids) == len(set(ids)) == 5
        assert ids == sorted(ids, reverse=True)
        assert third.next is None


def test_submit_many_is_all_or_nothing(shared: Network) -> None:
    with shared.client() as c:
        before = c.counts()
        specs = [
            {"command": ["sh", "-c", f"echo {i}"], "resources": {"cpus": 0.1}} for i in range(50)
        ]
        jobs = c.submit_many(specs)
        assert len({j.id for j in jobs}) == 50
        done = [c.wait(j.id, timeout=60) for j in jobs]
        assert all(j.state is JobState.COMPLETE for j in done)
        outputs = ["".join(ch["data"] for ch in c.logs(j.id)) for j in jobs]
        assert outputs == [f"{i}\n" for i in range(50)]
        # One impossible job refuses the whole batch, naming which one.
        bad = [*specs[:3], {"command": ["true"], "resources": {"cpus": 4000}}]
        with pytest.raises(ApiError) as info:
            c.submit_many(bad)
        assert info.value.status == 409
        assert info.value.problem.errors[0].field == "jobs.3.resources"
        after = c.counts()
        assert sum(after.values()) == sum(before.values()) + 50


def test_the_cli_prints_job_text_as_it_is(shared: Network) -> None:
    """Rich read it as markup and emoji codes: '[/red]' was a traceback, ':x:' an emoji."""
    odd = shared.cnet("run", "--", "foo[/red]bar")
    assert odd.returncode == 127 and "Traceback" not in odd.stderr, odd.stderr
    assert "command not found: foo[/red]bar" in odd.stderr
    assert shared.cnet("run", "--name", "n:x:y", "--", "true").returncode == 0
    listed = shared.cnet("ps", "--limit", "5")
    assert "n:x:y" in listed.stdout and "❌" not in listed.stdout
    far = shared.cnet("run", "--pool", "cpi:x:acme/hpc", "--", "true")
    assert "no pool cpi:x:acme/hpc" in far.stderr, far.stderr
