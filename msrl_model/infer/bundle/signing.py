"""Bundle signatures (Ed25519, from the ``cryptography`` package) and the keys a user trusts.

A signed bundle holds ``signature.json`` beside ``manifest.json``::

    {"format": "msrl-bundle-signature", "version": 1, "algorithm": "ed25519",
     "signer": "<name>", "public_key": "<base64 raw 32 bytes>", "signature": "<base64 64 bytes>"}

The signature is over ``SIGNED_PREFIX + signer (UTF-8) + b"\\n" + the exact bytes of manifest.json``;
the manifest holds the size and SHA-256 of every other file, so the signature covers the whole
bundle, and the signer's name cannot be changed without breaking it.

On load (:func:`verify_signature`): no ``signature.json`` → "unsigned — provenance unknown"; a
signature that does not verify → :class:`~msrl_model.errors.BundleError` (refused); a valid one by a
key in the trusted-keys folder → "signed by <name> (key <fingerprint>)"; a valid one by any other key
→ "signed by an unknown key (…)". The trusted keys are the public-key PEM files (``*.pem``,
``*.pub``) in ``$MSRL_TRUSTED_KEYS`` (one or more folders, ``os.pathsep``-separated) or, when that is
unset, in the per-user config folder ``msrl-studio/trusted-keys`` (Linux
``~/.config/msrl-studio/trusted-keys``).

Keys: ``msrl keygen OUT.pem`` writes the private key (PKCS#8 PEM, unencrypted, mode 0600) and the
public key beside it (``OUT.pub.pem``); ``python -m msrl_model.train … --sign-key OUT.pem`` signs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msrl_model.errors import BundleError, MSRLError

SIGNATURE = "signature.json"
SIGNATURE_FORMAT = "msrl-bundle-signature"
SIGNED_PREFIX = b"msrl-bundle-signature-v1\n"
TRUSTED_KEYS_ENV = "MSRL_TRUSTED_KEYS"
MAX_SIGNATURE_BYTES = 64 << 10
MAX_KEY_BYTES = 64 << 10
UNSIGNED = "unsigned — provenance unknown"


class SigningKeyError(MSRLError):
    """A signing key could not be read or written."""


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key and the name its signatures carry."""

    private_key: Any  # cryptography Ed25519PrivateKey
    signer: str

    @property
    def public_bytes(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Provenance:
    """Who signed a bundle, as far as this machine can tell."""

    signed: bool  # a signature.json that verifies
    trusted: bool  # ... by a key in the trusted-keys folder
    signer: str | None  # the name the signature carries
    key_fingerprint: str | None  # :func:`key_fingerprint` of the signing key

    @property
    def text(self) -> str:
        if not self.signed:
            return UNSIGNED
        if self.trusted:
            return f"signed by {self.signer} (key {self.key_fingerprint})"
        return (f"signed by an unknown key (key {self.key_fingerprint}, claims to be {self.signer!r}); "
                "provenance unverified")


def key_fingerprint(public_raw: bytes) -> str:
    """A short stable name of a public key: the first 16 hex digits of SHA-256 of its 32 raw bytes."""
    digest = hashlib.sha256(public_raw).hexdigest()[:16]
    return ":".join(digest[i:i + 4] for i in range(0, 16, 4))


def signed_message(signer: str, manifest_bytes: bytes) -> bytes:
    return SIGNED_PREFIX + signer.encode("utf-8") + b"\n" + manifest_bytes


# ---- keys ---------------------------------------------------------------------------------------


def _read_small(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise SigningKeyError(f"{what} {path} is too large to be a key file; check the path")
        return path.read_bytes()
    except OSError as err:
        raise SigningKeyError(f"cannot read {what} {path} ({err.strerror or err}); check the path") from None


def load_signing_key(path: str | Path, signer: str | None = None) -> SigningKey:
    """The Ed25519 private key in PEM file ``path`` (unencrypted PKCS#8, as ``msrl keygen`` writes);
    its signatures carry ``signer`` (default: the file name without ``.pem``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    data = _read_small(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise SigningKeyError(f"signing key {path} is not an unencrypted PEM private key ({err}); "
                              "make one with: msrl keygen KEY.pem") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path} is not an Ed25519 key; make one with: msrl keygen KEY.pem")
    name = signer if signer is not None else path.name.removesuffix(".pem")
    if not name or "\n" in name or len(name) > 200:
        raise SigningKeyError(f"signer name {name!r} must be one line of 1-200 characters")
    return SigningKey(key, name)


def public_key_path(private_path: str | Path) -> Path:
    """Where ``msrl keygen`` writes the public key of ``private_path``: ``NAME.pem`` → ``NAME.pub.pem``."""
    p = Path(private_path)
    return p.with_name(p.name.removesuffix(".pem") + ".pub.pem")


def generate_key(out: str | Path, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write a new Ed25519 private key to ``out`` (0600) and its public key beside it;
    returns (private path, public path, fingerprint)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from msrl_model.files import atomic_write

    out = Path(out)
    pub = public_key_path(out)
    if not force:
        for p in (out, pub):
            if p.exists():
                raise SigningKeyError(f"{p} exists; choose another name or pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        atomic_write(out, private_pem, secret=True)
        atomic_write(pub, public_pem)
    except OSError as err:
        raise SigningKeyError(f"cannot write the key files beside {out} ({err.strerror or err}); "
                              "choose a writable folder") from None
    return out, pub, key_fingerprint(raw)


def trusted_key_dirs() -> list[Path]:
    """The folders whose public keys are trusted (``$MSRL_TRUSTED_KEYS`` or the per-user default)."""
    env = os.environ.get(TRUSTED_KEYS_ENV)
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p]
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME")
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return [base / "msrl-studio" / "trusted-keys"]


def trusted_public_keys() -> dict[bytes, Path]:
    """Raw public key → the file it came from, for every readable Ed25519 public key in the trusted
    folders (unreadable or other files are skipped: they can only make a key *not* trusted)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[bytes, Path] = {}
    for folder in trusted_key_dirs():
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix in (".pem", ".pub"))
        except OSError:
            continue
        for p in files:
            try:
                if not p.is_file() or p.stat().st_size > MAX_KEY_BYTES:
                    continue
                key = serialization.load_pem_public_key(p.read_bytes())
            except (OSError, ValueError, TypeError):
                continue
            if isinstance(key, Ed25519PublicKey):
                keys[key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)] = p
    return keys


# ---- signing and verifying ----------------------------------------------------------------------


def signature_text(key: SigningKey, manifest_bytes: bytes) -> str:
    """The ``signature.json`` of ``manifest_bytes`` signed with ``key``."""
    sig = key.private_key.sign(signed_message(key.signer, manifest_bytes))
    doc = {"format": SIGNATURE_FORMAT, "version": 1, "algorithm": "ed25519", "signer": key.signer,
           "public_key": base64.b64encode(key.public_bytes).decode("ascii"),
           "signature": base64.b64encode(sig).decode("ascii")}
    return json.dumps(doc, indent=2) + "\n"


def _b64(doc: dict, key: str, size: int, path: Path) -> bytes:
    value = doc.get(key)
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise _bad_signature(path, f"field {key} must be {size} bytes in base64")
    return raw


def _bad_signature(path: Path, what: str) -> BundleError:
    return BundleError(f"model bundle {path}: {SIGNATURE} is malformed ({what}); the bundle is damaged — "
                       "rebuild or re-download it")


def verify_signature(raw_signature: bytes | None, manifest_bytes: bytes, path: Path) -> Provenance:
    """The provenance of a bundle whose ``signature.json`` holds ``raw_signature`` (None: absent).

    Raises BundleError when the file is malformed or the signature does not verify."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if raw_signature is None:
        return Provenance(False, False, None, None)
    try:
        doc = json.loads(raw_signature.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _bad_signature(path, f"not JSON: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
        raise _bad_signature(path, f"not an {SIGNATURE_FORMAT} file")
    if doc.get("version") != 1 or doc.get("algorithm") != "ed25519":
        raise BundleError(f"model bundle {path}: {SIGNATURE} uses version {doc.get('version')!r} / algorithm "
                          f"{doc.get('algorithm')!r}, which this MSRL Studio cannot verify; update MSRL Studio")
    signer = doc.get("signer")
    if not isinstance(signer, str) or not signer or "\n" in signer or len(signer) > 200:
        raise _bad_signature(path, "field signer must be a one-line name")
    public = _b64(doc, "public_key", 32, path)
    signature = _b64(doc, "signature", 64, path)
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, signed_message(signer, manifest_bytes))
    except InvalidSignature:
        raise BundleError(f"model bundle {path}: its signature does not verify (manifest.json or {SIGNATURE} "
                          "was modified after signing); do not use it — copy or download the bundle again "
                          "from its publisher") from None
    return Provenance(True, public in trusted_public_keys(), signer, key_fingerprint(public))


__all__ = ["MAX_SIGNATURE_BYTES", "Provenance", "SIGNATURE", "SigningKey", "SigningKeyError", "UNSIGNED",
           "generate_key", "key_fingerprint", "load_signing_key", "public_key_path",
           "signature_text", "trusted_key_dirs", "trusted_public_keys", "verify_signature"]
