"""Ed25519 keys and detached signatures over canonical JSON.

Signatures cover a canonical encoding (sorted keys, no spaces) so that a record signed by an
agent verifies the same at every node, whatever JSON library re-serialised it on the way.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(ValueError):
    """A signature that does not verify, or a key that cannot be read."""


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as e:
        raise SignatureError("not base64url") from e


class KeyPair:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key = b64e(
            private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> KeyPair:
        """The key is the identity: losing it changes who the agent is, so it is kept on disk."""
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError as e:
                raise SignatureError(f"cannot read key {path}: {e}") from e
            if not isinstance(key, Ed25519PrivateKey):
                raise SignatureError(f"{path} is not an Ed25519 key")
            return cls(key)
        pair = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = pair.private_pem()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)  # never replaces: two processes creating it agree on one key
        except FileExistsError:
            return cls.load_or_create(path)
        finally:
            tmp.unlink(missing_ok=True)
        return pair

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> str:
        return b64e(self._private.sign(message))

    def sign_json(self, data: Any) -> str:
        return self.sign(canonical(data))


_KEY_CACHE: dict[str, Ed25519PublicKey] = {}


def public_key(text: str) -> Ed25519PublicKey:
    key = _KEY_CACHE.get(text)
    if key is None:
        raw = b64d(text)
        if len(raw) != 32:
            raise SignatureError("an Ed25519 public key is 32 bytes")
        key = Ed25519PublicKey.from_public_bytes(raw)
        if len(_KEY_CACHE) > 100_000:
            _KEY_CACHE.clear()
        _KEY_CACHE[text] = key
    return key


def verify(public: str, message: bytes, signature: str) -> None:
    try:
        public_key(public).verify(b64d(signature), message)
    except InvalidSignature as e:
        raise SignatureError("signature does not verify") from e


def verify_json(public: str, data: Any, signature: str) -> None:
    verify(public, canonical(data), signature)
