"""CPI grammar (property tests), Ed25519 keys, and signed agent requests."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from computenet.ident import requests as signed
from computenet.ident.cpi import CPI, LEVELS, MAX_LENGTH, CPIError, parse
from computenet.ident.keys import KeyPair, SignatureError, b64e, verify, verify_json

# The grammar, written out independently of cpi.py (docs/cpi.md): \A and \Z, not ^ and $,
# so that a trailing newline never counts as part of a valid CPI.
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
SEGMENT = r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?"
GRAMMAR = re.compile(rf"\Acpi:{LABEL}(?:\.{LABEL}){{0,7}}:{SEGMENT}(?:/{SEGMENT}){{0,3}}\Z")

labels = st.from_regex(rf"\A{LABEL}\Z", fullmatch=True)
segments = st.from_regex(rf"\A{SEGMENT}\Z", fullmatch=True)
authorities = st.lists(labels, min_size=1, max_size=8).map(".".join)
paths = st.lists(segments, min_size=1, max_size=4).map(tuple)


@st.composite
def cpis(draw: st.DrawFn) -> CPI:
    authority = draw(authorities)
    path = draw(paths)
    # Keep within the length limit by trimming segments from the end (at least one stays).
    while len(path) > 1 and len(f"cpi:{authority}:{'/'.join(path)}") > MAX_LENGTH:
        path = path[:-1]
    text = f"cpi:{authority}:{'/'.join(path)}"
    if len(text) > MAX_LENGTH:
        authority = authority[: max(1, MAX_LENGTH - len(text) + len(authority))].rstrip(".-")
        authority = authority or "a"
    return CPI(authority, path)


# --- round trips -----------------------------------------------------------------------------


@given(cpis())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_parse_of_str_is_identity(cpi: CPI) -> None:
    text = str(cpi)
    assert GRAMMAR.match(text)
    assert len(text) <= MAX_LENGTH
    assert parse(text) == cpi
    assert cpi.kind == LEVELS[len(cpi.path) - 1]


@given(st.from_regex(GRAMMAR, fullmatch=True).filter(lambda s: len(s) <= MAX_LENGTH))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@example("cpi:cn.east.sh01:acme/gpu-a/node-07/gpu-3")
@example("cpi:0:0")
def test_str_of_parse_is_identity(text: str) -> None:
    assert str(parse(text)) == text


# Printable ASCII without '\n' (see test_trailing_newline_rejected for that one).
_ALPHABET = st.sampled_from("cpi:./-_aAzZ09 \t\x00é" + "abcdefghijklmnopqrstuvwxyz")


@given(st.text(_ALPHABET, max_size=40).map(lambda s: s if s.startswith("cpi") else "cpi:" + s))
@settings(max_examples=500)
def test_parse_accepts_exactly_the_grammar(text: str) -> None:
    """Anything parse accepts is in the grammar and formats back unchanged; anything else is
    a CPIError (never another exception)."""
    try:
        cpi = parse(text)
    except CPIError as e:
        assert str(e)
        assert not GRAMMAR.match(text)
    else:
        assert GRAMMAR.match(text), text
        assert str(cpi) == text


def test_length_limit_is_inclusive() -> None:
    authority = "n" * 32
    room = MAX_LENGTH - len(f"cpi:{authority}:") - 3  # three '/' between four segments
    path = ["p" * (room // 4)] * 3 + ["d" * (room - 3 * (room // 4))]
    text = f"cpi:{authority}:{'/'.join(path)}"
    assert len(text) == MAX_LENGTH
    assert all(len(p) < 63 for p in path)
    assert str(parse(text)) == text
    longer = (*path[:-1], path[-1] + "x")
    with pytest.raises(CPIError, match=f"at most {MAX_LENGTH} characters"):
        parse(f"cpi:{authority}:{'/'.join(longer)}")
    with pytest.raises(CPIError, match=f"at most {MAX_LENGTH} characters"):
        CPI(authority, longer)


# --- malformed strings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("cpi:Local:acme", "invalid node code 'Local'"),
        ("cpi:local:Acme", "invalid provider name 'Acme'"),
        ("cpi:local:acme/GPU", "invalid pool name 'GPU'"),
        ("cpi:local:acme//n1", "invalid pool name ''"),
        ("cpi:local:acme/", "invalid pool name ''"),
        ("cpi:local:", "invalid provider name ''"),
        ("cpi::acme", "invalid node code ''"),
        ("cpi:a..b:acme", "invalid node code 'a..b'"),
        ("cpi:local:a/b/c/d/e", "1 to 4 segments, got 5"),
        ("cpx:local:acme", "a CPI starts with 'cpi:'"),
        ("CPI:local:acme", "a CPI starts with 'cpi:'"),
        ("local:acme", "a CPI starts with 'cpi:'"),
        ("", "a CPI starts with 'cpi:'"),
        ("cpi:local", "cpi:<node-code>:<provider>"),
        ("cpi:" + "a" * 300 + ":x", f"at most {MAX_LENGTH} characters"),
        ("cpi:local-:acme", "invalid node code 'local-'"),
        ("cpi:-local:acme", "invalid node code '-local'"),
        ("cpi:local:acme-", "invalid provider name 'acme-'"),
        ("cpi:local:acme/pool/node/gpu-", "invalid device name 'gpu-'"),
        ("cpi:local:acme/pool/node.", "invalid machine name 'node.'"),
        ("cpi:local:ac me", "invalid provider name 'ac me'"),
        ("cpi:local:acme:x", "invalid provider name 'acme:x'"),
        ("cpi:" + "a" * 33 + ":x", "each 1-32 characters"),
        ("cpi:" + ".".join("a" * 9) + ":x", "at most 8 labels"),
        ("cpi:local:" + "p" * 64, "invalid provider name"),
    ],
)
def test_malformed_rejected_with_reason(text: str, why: str) -> None:
    with pytest.raises(CPIError) as exc:
        parse(text)
    assert why in str(exc.value)


def test_non_string_rejected() -> None:
    with pytest.raises(CPIError, match="a CPI is a string"):
        parse(42)  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(CPIError, match="1 to 4 segments, got 0"):
        CPI("local", ())
    with pytest.raises(CPIError, match="invalid node code"):
        CPI("Local", ("acme",))


@pytest.mark.parametrize("text", ["cpi:local:acme\n", "cpi:local\n:acme", "cpi:local:a\n/b"])
def test_trailing_newline_rejected(text: str) -> None:
    with pytest.raises(CPIError):
        parse(text)


# --- hierarchy -------------------------------------------------------------------------------


def test_child_parent_kind() -> None:
    provider = parse("cpi:cn.east:acme")
    pool = provider.child("gpu-a")
    machine = pool.child("node-07")
    device = machine.child("gpu-3")
    assert str(device) == "cpi:cn.east:acme/gpu-a/node-07/gpu-3"
    assert [c.kind for c in (provider, pool, machine, device)] == list(LEVELS)
    assert device.parent == machine
    assert machine.parent == pool
    assert pool.parent == provider
    assert provider.parent is None


def test_child_below_device_rejected() -> None:
    device = parse("cpi:x:a/b/c/d")
    with pytest.raises(CPIError, match="1 to 4 segments, got 5"):
        device.child("e")


def test_child_validates_segment() -> None:
    with pytest.raises(CPIError, match="invalid pool name 'Bad'"):
        parse("cpi:x:a").child("Bad")


@given(cpis())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_every_ancestor_contains_its_descendants(cpi: CPI) -> None:
    node: CPI | None = cpi
    depth = len(cpi.path)
    while node is not None:
        assert cpi.is_under(node)
        assert len(node.path) == depth
        depth -= 1
        node = node.parent
    assert depth == 0


def test_is_under() -> None:
    pool = parse("cpi:cn.east:acme/gpu-a")
    assert parse("cpi:cn.east:acme/gpu-a/n1").is_under(pool)
    assert parse("cpi:cn.east:acme/gpu-a/n1/d0").is_under(pool)
    assert pool.is_under(pool)
    assert pool.is_under(parse("cpi:cn.east:acme"))
    # a shared string prefix is not a shared path prefix
    assert not parse("cpi:cn.east:acme/gpu-ab").is_under(pool)
    assert not parse("cpi:cn.east:acme/gpu-b/n1").is_under(pool)
    # same path under another authority is somebody else's
    assert not parse("cpi:cn.west:acme/gpu-a/n1").is_under(pool)
    assert not parse("cpi:cn.east:acme").is_under(pool)


def test_cpis_are_values() -> None:
    a, b = parse("cpi:x:a/b"), parse("cpi:x:a/b")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, parse("cpi:x:a")}) == 2
    with pytest.raises(AttributeError):
        a.authority = "y"  # type: ignore[misc]


# --- keys ------------------------------------------------------------------------------------


def test_sign_verify_roundtrip() -> None:
    key = KeyPair.generate()
    sig = key.sign(b"hello")
    verify(key.public_key, b"hello", sig)
    assert len(key.public_key) == 43  # 32 bytes, base64url without padding


def test_tampered_message_rejected() -> None:
    key = KeyPair.generate()
    sig = key.sign(b"pay 10")
    with pytest.raises(SignatureError, match="does not verify"):
        verify(key.public_key, b"pay 11", sig)


def test_tampered_signature_rejected() -> None:
    key = KeyPair.generate()
    sig = bytearray(key.sign(b"m").encode())
    sig[5] = ord("A") if sig[5] != ord("A") else ord("B")
    with pytest.raises(SignatureError):
        verify(key.public_key, b"m", sig.decode())


def test_other_key_rejected() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    assert a.public_key != b.public_key
    with pytest.raises(SignatureError):
        verify(b.public_key, b"m", a.sign(b"m"))


def test_bad_public_key_rejected() -> None:
    key = KeyPair.generate()
    with pytest.raises(SignatureError, match="32 bytes"):
        verify(b64e(b"short"), b"m", key.sign(b"m"))


def test_sign_json_is_canonical() -> None:
    key = KeyPair.generate()
    sig = key.sign_json({"b": 1, "a": [1, 2], "c": "ü"})
    verify_json(key.public_key, {"c": "ü", "a": [1, 2], "b": 1}, sig)
    with pytest.raises(SignatureError):
        verify_json(key.public_key, {"c": "ü", "a": [2, 1], "b": 1}, sig)


def test_key_persisted_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "id" / "pool.key"
    first = KeyPair.load_or_create(path)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not path.with_suffix(".tmp").exists()
    again = KeyPair.load_or_create(path)
    assert again.public_key == first.public_key
    verify(first.public_key, b"m", again.sign(b"m"))


def test_unreadable_key_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pool.key"
    path.write_text("not a key")
    with pytest.raises(SignatureError, match="cannot read key"):
        KeyPair.load_or_create(path)
    assert path.read_text() == "not a key"  # never silently replaced: that would be a new identity


def test_non_ed25519_key_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pool.key"
    pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    with pytest.raises(SignatureError, match="not an Ed25519 key"):
        KeyPair.load_or_create(path)


# --- signed requests -------------------------------------------------------------------------

POOL = "cpi:local:acme/alpha"
TARGET = f"/v1/pools/{POOL}/heartbeat"


def _check(key: KeyPair, headers: dict[str, str], method: str, target: str, body: bytes) -> None:
    signed.check(
        key.public_key,
        method,
        target,
        headers[signed.HEADER_TIME],
        body,
        headers[signed.HEADER_SIGNATURE],
    )


def test_signed_request_verifies() -> None:
    key = KeyPair.generate()
    headers = signed.sign(key, POOL, "post", TARGET, b'{"seq":1}')
    assert headers[signed.HEADER_POOL] == POOL
    assert abs(float(headers[signed.HEADER_TIME]) - time.time()) < 5
    _check(key, headers, "POST", TARGET, b'{"seq":1}')


def test_different_body_rejected() -> None:
    key = KeyPair.generate()
    headers = signed.sign(key, POOL, "POST", TARGET, b'{"seq":1}')
    with pytest.raises(SignatureError, match="does not verify"):
        _check(key, headers, "POST", TARGET, b'{"seq":2}')


def test_different_path_rejected() -> None:
    key = KeyPair.generate()
    headers = signed.sign(key, POOL, "POST", TARGET, b"")
    other = "/v1/pools/cpi:local:acme/beta/heartbeat"
    with pytest.raises(SignatureError, match="does not verify"):
        _check(key, headers, "POST", other, b"")
    with pytest.raises(SignatureError, match="does not verify"):
        _check(key, headers, "POST", TARGET + "?x=1", b"")


def test_different_method_rejected() -> None:
    key = KeyPair.generate()
    headers = signed.sign(key, POOL, "POST", TARGET, b"")
    with pytest.raises(SignatureError, match="does not verify"):
        _check(key, headers, "GET", TARGET, b"")


def test_different_key_rejected() -> None:
    key, other = KeyPair.generate(), KeyPair.generate()
    headers = signed.sign(key, POOL, "POST", TARGET, b"")
    with pytest.raises(SignatureError, match="does not verify"):
        _check(other, headers, "POST", TARGET, b"")


@pytest.mark.parametrize("age", [signed.WINDOW + 5, -(signed.WINDOW + 5), 86400])
def test_timestamp_outside_window_rejected(age: float) -> None:
    """Correctly signed, but too old (or too far ahead): refused for the time alone."""
    key = KeyPair.generate()
    stamp = f"{time.time() - age:.3f}"
    sig = key.sign(signed.message("POST", TARGET, stamp, b""))
    with pytest.raises(SignatureError, match="outside the accepted window"):
        signed.check(key.public_key, "POST", TARGET, stamp, b"", sig)


def test_timestamp_inside_window_accepted() -> None:
    key = KeyPair.generate()
    stamp = f"{time.time() - signed.WINDOW + 30:.3f}"
    sig = key.sign(signed.message("POST", TARGET, stamp, b""))
    signed.check(key.public_key, "POST", TARGET, stamp, b"", sig)


@pytest.mark.parametrize("stamp", ["", "yesterday", "1e"])
def test_unparseable_timestamp_rejected(stamp: str) -> None:
    key = KeyPair.generate()
    sig = key.sign(signed.message("POST", TARGET, stamp, b""))
    with pytest.raises(SignatureError, match="bad timestamp"):
        signed.check(key.public_key, "POST", TARGET, stamp, b"", sig)


def test_nan_timestamp_rejected() -> None:
    key = KeyPair.generate()
    sig = key.sign(signed.message("POST", TARGET, "nan", b""))
    with pytest.raises(SignatureError):
        signed.check(key.public_key, "POST", TARGET, "nan", b"", sig)
