"""The bundle shipped with MSRL Studio (``resources/bundle``), pinned by the SHA-256 of its manifest.

The manifest holds the size and SHA-256 of every other file of the bundle, so pinning the manifest's
own SHA-256 in the code pins the whole bundle: an edit of any displayed number (a C-index, the
``cohort.synthetic`` flag) or of any file is refused when the bundle is loaded as the shipped one.
:func:`~msrl_model.infer.bundle.load_bundle` applies the pin to every bundle at a shipped location
(:func:`is_shipped_location`: ``resources/bundle`` or ``resources/*.msrl`` of the source tree, the
installed packages or a frozen app), whoever loads it (the app's default bundle, ``msrl analyze
--bundle resources/bundle``); ``load_bundle(..., shipped=True)`` forces it.

Rebuilding the shipped bundle (``resources/README.md``) means updating :data:`SHIPPED_MANIFEST_SHA256`
to ``sha256sum resources/bundle/manifest.json``; ``tests/test_bundle_security.py`` fails until then.
"""

from __future__ import annotations

from pathlib import Path

from msrl_model.errors import BundleError
from msrl_model.resources import resource_dirs

# sha256sum resources/bundle/manifest.json, as committed (the demo bundle rebuilt for issues 9, 11 and 12).
SHIPPED_MANIFEST_SHA256 = "8553a4cbd0982d2d2c5012ef4c2c04d1b7bed6f2d472c178427feb7bcf475594"
SHIPPED_PROVENANCE = "shipped with MSRL Studio (pinned fingerprint verified)"


def is_shipped_location(path: str | Path) -> bool:
    """True when ``path`` is (resolves to) ``<resources>/bundle`` or ``<resources>/*.msrl``."""
    try:
        p = Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    for folder in resource_dirs():
        try:
            folder = folder.resolve()
        except (OSError, RuntimeError):
            continue
        if p == folder / "bundle" or (p.parent == folder and p.suffix.lower() == ".msrl"):
            return True
    return False


def check_shipped(fingerprint: str, path: str | Path) -> None:
    """BundleError unless ``fingerprint`` (SHA-256 of manifest.json) is the pinned one."""
    if fingerprint != SHIPPED_MANIFEST_SHA256:
        raise BundleError(f"the model bundle shipped with MSRL Studio ({path}) was modified (its manifest "
                          f"fingerprint {fingerprint[:16]}… is not the pinned {SHIPPED_MANIFEST_SHA256[:16]}…); "
                          "do not trust its numbers — reinstall MSRL Studio")


__all__ = ["SHIPPED_MANIFEST_SHA256", "SHIPPED_PROVENANCE", "check_shipped", "is_shipped_location",
           "resource_dirs"]
