"""Seal keys: an Ed25519 pair in PEM files, outside the bus database.

The private key is PKCS#8 PEM, written with mode 0600; the public key sits next to it as
``<path>.pub`` (SubjectPublicKeyInfo PEM). A key's fingerprint is the SHA-256 of its raw 32-byte
public key, in hex; seals record it so the verifier knows which public key to use.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from connectors.errors import ConfigurationError

__all__ = [
    "PRIVATE_KEY_ENV",
    "PUBLIC_KEY_ENV",
    "generate_keypair",
    "key_fingerprint",
    "load_private_key",
    "load_public_key",
    "public_key_path",
]

PRIVATE_KEY_ENV = "LIENTHONG_SEAL_KEY"
PUBLIC_KEY_ENV = "LIENTHONG_SEAL_PUBLIC_KEY"


def public_key_path(private_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(private_path)}.pub")


def key_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keypair(path: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write a new private key to ``path`` (mode 0600, never overwriting) and its public key to
    ``path.pub``; return both paths and the fingerprint."""
    private_path, public_path = Path(path), public_key_path(path)
    for existing in (private_path, public_path):
        if existing.exists():
            raise ConfigurationError(f"{existing} already exists; refusing to overwrite a seal key")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, pem)
    finally:
        os.close(fd)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path, key_fingerprint(key)


def _resolve(path: str | os.PathLike[str] | None, env: str, what: str) -> Path:
    chosen = path if path is not None else os.environ.get(env)
    if not chosen:
        raise ConfigurationError(f"no {what}: pass a path or set {env}")
    return Path(chosen)


def load_private_key(path: str | os.PathLike[str] | None = None) -> Ed25519PrivateKey:
    """The seal signing key from ``path``, else from ``$LIENTHONG_SEAL_KEY``."""
    file = _resolve(path, PRIVATE_KEY_ENV, "seal private key")
    try:
        key = serialization.load_pem_private_key(file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:  # the message never carries key material
        raise ConfigurationError(f"cannot read the seal private key {file}: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{file} is not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str] | None = None) -> Ed25519PublicKey:
    """The seal verification key from ``path``, else ``$LIENTHONG_SEAL_PUBLIC_KEY``, else
    ``$LIENTHONG_SEAL_KEY.pub``."""
    if path is None and not os.environ.get(PUBLIC_KEY_ENV) and os.environ.get(PRIVATE_KEY_ENV):
        path = public_key_path(os.environ[PRIVATE_KEY_ENV])
    file = _resolve(path, PUBLIC_KEY_ENV, "seal public key")
    try:
        key = serialization.load_pem_public_key(file.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"cannot read the seal public key {file}: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{file} is not an Ed25519 public key")
    return key
