"""Unit tests of the standard interfaces: job states, human quantities, job specs, schemas."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from computenet.model import (
    TERMINAL,
    IllegalTransition,
    JobSpec,
    JobState,
    ResourceRequest,
    check_transition,
    parse_duration,
    parse_memory,
)
from computenet.model.common import MAX_DURATION, MAX_MEMORY
from computenet.model.job import MAX_COMMAND_BYTES, MAX_ENV_BYTES, TRANSITIONS
from computenet.model.schema import EXPORTED, export

S = JobState

# The job lifecycle as documented (DESIGN.md "Job" flow, job.py): written out here on its own
# so that an accidental edit of TRANSITIONS shows up as a failing test, not a silent change.
EXPECTED: dict[JobState, set[JobState]] = {
    S.QUEUED: {S.SCHEDULED, S.FAILED, S.CANCELED},
    S.SCHEDULED: {S.STAGING, S.RUNNING, S.QUEUED, S.FAILED, S.CANCELED},
    S.STAGING: {S.RUNNING, S.QUEUED, S.FAILED, S.CANCELED},
    S.RUNNING: {S.COMPLETE, S.QUEUED, S.FAILED, S.CANCELED},
    S.COMPLETE: set(),
    S.FAILED: set(),
    S.CANCELED: set(),
}
LEGAL = [(old, new) for old, news in EXPECTED.items() for new in sorted(news)]
ILLEGAL = [
    (old, new) for old, new in itertools.product(JobState, JobState) if new not in EXPECTED[old]
]


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    """``{"resources.cpus": "Input should be greater than 0", ...}``."""
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in exc.value.errors()}


def _error_types(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {".".join(str(p) for p in e["loc"]): e["type"] for e in exc.value.errors()}


# --- job state machine ---------------------------------------------------------------------


def test_transition_table_is_the_documented_lifecycle() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert {k: set(v) for k, v in TRANSITIONS.items()} == EXPECTED


@pytest.mark.parametrize(("old", "new"), LEGAL, ids=[f"{o}->{n}" for o, n in LEGAL])
def test_legal_transition_accepted(old: JobState, new: JobState) -> None:
    assert check_transition(old, new) is None


@pytest.mark.parametrize(("old", "new"), ILLEGAL, ids=[f"{o}->{n}" for o, n in ILLEGAL])
def test_illegal_transition_rejected(old: JobState, new: JobState) -> None:
    with pytest.raises(IllegalTransition) as exc:
        check_transition(old, new)
    assert exc.value.old is old
    assert exc.value.new is new
    assert str(exc.value) == f"a job cannot go from {old.value} to {new.value}"
    assert isinstance(exc.value, ValueError)


def test_no_state_transitions_to_itself() -> None:
    for s in JobState:
        with pytest.raises(IllegalTransition):
            check_transition(s, s)


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_have_no_exits(state: JobState) -> None:
    assert state.terminal
    for new in JobState:
        with pytest.raises(IllegalTransition):
            check_transition(state, new)


def test_terminal_set_is_exactly_the_states_without_exits() -> None:
    assert {S.COMPLETE, S.FAILED, S.CANCELED} == TERMINAL
    for s in JobState:
        assert s.terminal == (not EXPECTED[s])


def test_every_state_reaches_a_terminal_state() -> None:
    """No job can get stuck: from every state some path ends in a terminal state."""
    for start in JobState:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL, start


# --- parse_memory --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4G", 4 * 2**30),
        ("4g", 4 * 2**30),
        ("512M", 512 * 2**20),
        ("1.5G", int(1.5 * 2**30)),
        ("1K", 1024),
        ("2T", 2 * 2**40),
        ("4GiB", 4 * 2**30),
        ("4Gi", 4 * 2**30),
        ("4GB", 4 * 10**9),
        ("512MB", 512 * 10**6),
        ("10kb", 10_000),
        ("100", 100),
        ("100B", 100),
        ("0", 0),
        (" 4 G ", 4 * 2**30),
        ("1P", 2**50),
        (123, 123),
    ],
)
def test_parse_memory_good(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected
    assert ResourceRequest(memory=text).memory == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("5Q", "unknown size unit 'Q'"),
        ("4GX", "unknown size unit 'GX'"),
        ("2000X", "unknown size unit 'X'"),
        ("-1G", "invalid size"),
        ("G", "invalid size"),
        ("", "invalid size"),
        ("1e3", "invalid size"),
        ("4 G B", "invalid size"),
        ("1.G", "invalid size"),
    ],
)
def test_parse_memory_bad(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_memory(text)
    with pytest.raises(ValidationError) as exc:
        ResourceRequest(memory=text)
    assert why in _errors(exc)["memory"]


def test_parse_memory_refuses_booleans() -> None:
    with pytest.raises(ValueError, match="memory must be a size"):
        parse_memory(True)
    with pytest.raises(ValidationError):
        ResourceRequest(memory=False)


@pytest.mark.parametrize("value", [-1, "-512M", MAX_MEMORY + 1, 10**20, "2048T"])
def test_memory_out_of_range_rejected(value: int | str) -> None:
    with pytest.raises(ValidationError) as exc:
        ResourceRequest(memory=value)
    assert set(_errors(exc)) == {"memory"}


def test_memory_limit_is_one_pebibyte_inclusive() -> None:
    assert MAX_MEMORY == 2**50
    assert ResourceRequest(memory="1024T").memory == 2**50
    assert ResourceRequest(memory=MAX_MEMORY).memory == MAX_MEMORY


# --- parse_duration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", 600),
        ("90s", 90),
        ("1h30m", 5400),
        ("1h30m15s", 5415),
        ("2d", 172_800),
        ("1.5h", 5400),
        ("10M", 600),
        ("30", 30),
        (" 10m ", 600),
        ("01:30:00", 5400),
        ("1:30", 90),
        ("90:00", 5400),  # as Slurm reads it: the first part may run past 59
        ("45", 45),
        (12.5, 12.5),
    ],
)
def test_parse_duration_good(text: str | float, expected: float) -> None:
    assert parse_duration(text) == expected
    assert ResourceRequest(time=text).time == expected


def test_parse_duration_milliseconds() -> None:
    assert parse_duration("1500ms") == pytest.approx(1.5)


@pytest.mark.parametrize(
    "text",
    [
        *("", "   ", "10x", "-5m", "1h 30m", "h", "10mm", "1:2:3:4", "1:-2", "::", "1:a"),
        *("5 minutes", "99:99:99", "1:60", "1:00:60", "1:٣٠"),
    ],
)
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
    with pytest.raises(ValidationError) as exc:
        ResourceRequest(time=text)
    assert "invalid duration" in _errors(exc)["time"]


def test_parse_duration_refuses_booleans() -> None:
    with pytest.raises(ValueError, match="duration must be"):
        parse_duration(True)


@pytest.mark.parametrize("value", [0, "0s", -5, "00:00:00", MAX_DURATION + 1, "367d"])
def test_time_limit_out_of_range_rejected(value: float | str) -> None:
    with pytest.raises(ValidationError) as exc:
        ResourceRequest(time=value)
    assert set(_errors(exc)) == {"time"}


# --- JobSpec ------------------------------------------------------------------------------


def test_minimal_spec_has_defaults() -> None:
    spec = JobSpec(command=["true"])
    assert spec.resources.cpus == 1.0
    assert spec.resources.memory == 0
    assert spec.resources.gpus == 0
    assert spec.resources.time is None
    assert spec.env == {}
    assert spec.pool is None


def test_spec_from_yaml_like_dict() -> None:
    spec = JobSpec.model_validate(
        {
            "name": "train",
            "command": ["python", "-c", "print(1)"],
            "env": {"OMP_NUM_THREADS": "4", "_X1": ""},
            "resources": {"cpus": 0.5, "memory": "512M", "gpus": 2, "time": "1h30m"},
            "pool": "cpi:cn.east:acme/gpu-a",
        }
    )
    assert spec.resources.memory == 512 * 2**20
    assert spec.resources.time == 5400
    assert spec.pool == "cpi:cn.east:acme/gpu-a"


def test_unknown_top_level_field_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({"command": ["true"], "comand": ["x"]})
    assert _error_types(exc) == {"comand": "extra_forbidden"}


def test_unknown_nested_field_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({"command": ["true"], "resources": {"cpu": 2}})
    assert _error_types(exc) == {"resources.cpu": "extra_forbidden"}


def test_command_required_and_not_empty() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({})
    assert "command" in _errors(exc)
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=[])
    assert "command" in _errors(exc)


def test_empty_program_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["", "arg"])
    assert "the program name must not be empty" in _errors(exc)["command"]


def test_empty_argument_after_program_allowed() -> None:
    assert JobSpec(command=["echo", ""]).command == ["echo", ""]


def test_command_at_size_limit_accepted() -> None:
    # Each argument counts its UTF-8 bytes plus one terminator.
    spec = JobSpec(command=["x" * (MAX_COMMAND_BYTES - 1)])
    assert len(spec.command[0]) == MAX_COMMAND_BYTES - 1


def test_command_over_size_limit_rejected() -> None:
    half = MAX_COMMAND_BYTES // 2
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["a" * half, "b" * half])
    msg = _errors(exc)["command"]
    assert f"command line is {MAX_COMMAND_BYTES + 2} bytes" in msg
    assert f"the limit is {MAX_COMMAND_BYTES}" in msg


def test_command_size_counts_bytes_not_characters() -> None:
    # 'é' is two bytes: the characters fit the per-argument limit but the bytes do not.
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["é" * (MAX_COMMAND_BYTES // 2)])
    assert f"the limit is {MAX_COMMAND_BYTES}" in _errors(exc)["command"]


def test_single_argument_over_limit_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["echo", "x" * (1 << 20)])
    assert "command.1" in _errors(exc)


def test_nul_byte_in_command_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["echo", "a\x00b"])
    assert "NUL" in _errors(exc)["command"]


def test_nul_byte_in_env_value_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["true"], env={"A": "x\x00y"})
    assert "NUL" in str(exc.value)


def test_env_over_size_limit_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["true"], env={f"K{i}": "v" * 1024 for i in range(130)})
    assert f"the limit is {MAX_ENV_BYTES}" in str(exc.value)


@pytest.mark.parametrize("key", ["1ABC", "A-B", "", "A B", "A=B", "É", "A" * 129, "A.B"])
def test_bad_env_key_rejected(key: str) -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["true"], env={key: "v"})
    assert any(loc.startswith("env.") for loc in _errors(exc)), _errors(exc)


@pytest.mark.parametrize("key", ["A", "_", "_X1", "path", "A" * 128, "LD_LIBRARY_PATH"])
def test_good_env_key_accepted(key: str) -> None:
    assert JobSpec(command=["true"], env={key: "v"}).env == {key: "v"}


@pytest.mark.parametrize("cpus", [0, -1, -0.5, 4096.5, 10_000, "lots"])
def test_bad_cpus_rejected(cpus: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({"command": ["true"], "resources": {"cpus": cpus}})
    assert set(_errors(exc)) == {"resources.cpus"}


@pytest.mark.parametrize("cpus", [0.001, 0.5, 1, 64, 4096])
def test_good_cpus_accepted(cpus: float) -> None:
    spec = JobSpec.model_validate({"command": ["true"], "resources": {"cpus": cpus}})
    assert spec.resources.cpus == cpus


@pytest.mark.parametrize("gpus", [-1, 1025, 1.5])
def test_bad_gpus_rejected(gpus: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({"command": ["true"], "resources": {"gpus": gpus}})
    assert set(_errors(exc)) == {"resources.gpus"}


def test_absurd_memory_in_spec_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({"command": ["true"], "resources": {"memory": 2**51}})
    assert set(_errors(exc)) == {"resources.memory"}


@pytest.mark.parametrize(
    "pool", ["local/alpha", "cpi:Local:x", "cpi:local:", "cpi:local:a/b/c/d/e", "http://x"]
)
def test_bad_pool_cpi_rejected(pool: str) -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["true"], pool=pool)
    assert set(_errors(exc)) == {"pool"}


@pytest.mark.parametrize("priority", [-1001, 1001])
def test_priority_out_of_range_rejected(priority: int) -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec(command=["true"], priority=priority)
    assert set(_errors(exc)) == {"priority"}


def test_spec_json_roundtrip() -> None:
    spec = JobSpec(
        command=["sh", "-c", "echo ü"],
        env={"A": "1"},
        resources=ResourceRequest(cpus=2, memory="1G", time="10m"),
        labels={"team": "x"},
    )
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec


# --- JSON schema export -------------------------------------------------------------------


def test_schema_export_writes_one_valid_file_per_model(tmp_path: Path) -> None:
    target = tmp_path / "out" / "schemas"
    written = export(target)
    names = sorted(m.__name__ for m in EXPORTED)
    assert sorted(p.name for p in written) == sorted(f"{n}.schema.json" for n in names)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in written)
    for model, path in zip(EXPORTED, written, strict=True):
        schema = json.loads(path.read_text())
        assert schema["title"] == model.__name__
        assert schema["type"] == "object"
        assert set(schema["properties"]) == set(model.model_fields)


def test_job_spec_schema_forbids_unknown_fields(tmp_path: Path) -> None:
    export(tmp_path)
    schema = json.loads((tmp_path / "JobSpec.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["command"]
    resources = schema["$defs"]["ResourceRequest"]
    assert resources["additionalProperties"] is False
    assert resources["properties"]["cpus"]["exclusiveMinimum"] == 0
    assert resources["properties"]["cpus"]["maximum"] == 4096


def test_schema_export_is_deterministic(tmp_path: Path) -> None:
    a = {p.name: p.read_text() for p in export(tmp_path / "a")}
    b = {p.name: p.read_text() for p in export(tmp_path / "b")}
    assert a == b


@pytest.mark.parametrize(
    ("uri", "whole", "inside"),
    [
        ("cnet://dataset/x", "cnet://dataset/x", ""),
        ("cnet://dataset/x@2/a/./b/", "cnet://dataset/x@2", "a/b"),
        ("cnet://dataset/x/", "cnet://dataset/x", ""),
        ("cpi:local:acme/gpu:/in/x", "cpi:local:acme/gpu:/in/x", ""),
    ],
)
def test_a_job_input_may_name_a_path_inside_a_version(uri: str, whole: str, inside: str) -> None:
    from computenet.model.dataset import DataInput, split_input

    assert split_input(uri) == (whole, inside)
    assert DataInput(uri=uri, path="in").uri == (f"{whole}/{inside}" if inside else whole)


@pytest.mark.parametrize(
    "uri", ["cnet://dataset/x@2/../y", "cnet://dataset/X/a", "cnet://dataset/"]
)
def test_a_bad_path_inside_a_version_is_refused(uri: str) -> None:
    from computenet.model.dataset import DataInput, DataOutput

    with pytest.raises(ValidationError):
        DataInput(uri=uri, path="in")
    with pytest.raises(ValidationError, match="a job's inputs"):
        DataOutput(uri="cnet://dataset/x/a", path="out")


def test_limits_are_said_in_the_units_asked() -> None:
    with pytest.raises(ValidationError) as exc:
        ResourceRequest(memory="2P", time="400d")
    errors = _errors(exc)
    assert errors["memory"].endswith("2.0 PiB is more than the limit, 1.0 PiB")
    assert errors["time"].endswith("400 days is more than the limit, 366 days")


def test_cpu_architectures_go_by_the_kernels_names() -> None:
    """``--arch amd64`` matched no pool: pools report ``uname -m``'s names."""
    from computenet.model.job import ResourceRequest, arch_name

    assert ResourceRequest(arch=["amd64", "x86-64", "arm64"]).arch == ["x86_64", "aarch64"]
    # and pools' as they report them (macOS, Windows), so that the two still meet
    assert [arch_name(a) for a in ("arm64", "AMD64", "x86_64")] == ["aarch64", "x86_64", "x86_64"]
