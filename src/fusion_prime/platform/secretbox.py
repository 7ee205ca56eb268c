"""Secrets a service must read back (to sign or to call with), encrypted at rest.

A hash would not do: the worker needs the plain value to sign a webhook or to post to a
Slack URL. Fernet with a key derived (HKDF) from the service's key material; `info`
separates the uses so one key never encrypts two kinds of secret the same way.
Earlier keys stay usable for decryption during a key rotation.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _fernet(key: str, info: bytes) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def cipher(key: str, previous: Sequence[str] = (), *, info: bytes) -> MultiFernet:
    """Encrypts with `key`; decrypts with it or any previous key (for key rotation)."""
    return MultiFernet([_fernet(key, info), *(_fernet(k, info) for k in previous)])


def split_keys(raw: str) -> list[str]:
    """A comma-separated list of previous keys, blanks dropped."""
    return [k.strip() for k in raw.split(",") if k.strip()]
