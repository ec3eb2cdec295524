"""API keys: `maas_<key id>_<secret>`. The key id is public and indexes the
store; only an HMAC of the secret is kept, compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "maas"
KEY_ID_LENGTH = 12
SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    secret: str


def new_key() -> tuple[str, ParsedKey]:
    """A fresh key: its full string (shown once) and its parts."""
    key_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:KEY_ID_LENGTH]
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return f"{PREFIX}_{key_id}_{secret}", ParsedKey(key_id, secret)


def parse_key(api_key: str) -> ParsedKey | None:
    """The parts of a well-formed key; None for anything else."""
    prefix, sep, rest = api_key.partition("_")
    if prefix != PREFIX or not sep:
        return None
    key_id, sep, secret = rest.partition("_")
    if len(key_id) != KEY_ID_LENGTH or not sep or not secret:
        return None
    return ParsedKey(key_id, secret)


def hash_secret(pepper: bytes, secret: str) -> bytes:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).digest()


def secret_matches(pepper: bytes, secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(pepper, secret), stored_hash)
