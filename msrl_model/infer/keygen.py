"""``msrl keygen OUT.pem``: make an Ed25519 key pair to sign model bundles (architecture §10).

The private key (``OUT.pem``, PKCS#8 PEM, mode 0600) stays with whoever trains and signs
(``python -m msrl_model.train … --sign-key OUT.pem``); the public key (``OUT.pub.pem``) goes to the
users, who put it in their trusted-keys folder (``$MSRL_TRUSTED_KEYS``, else
``~/.config/msrl-studio/trusted-keys``) so that the app shows "signed by <name> (key …)".
The work is in :mod:`msrl_model.infer.bundle.signing`; it is imported only when the command runs
(the ``msrl`` parser imports no torch).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``msrl keygen`` to the ``msrl`` dispatcher."""
    parser = subparsers.add_parser(
        "keygen", help="make an Ed25519 key pair to sign model bundles",
        description="Write a new Ed25519 private key (OUT.pem, mode 0600: keep it secret) and its public key "
                    "(OUT.pub.pem: give it to the users of your bundles, who put it in their trusted-keys "
                    "folder, $MSRL_TRUSTED_KEYS or ~/.config/msrl-studio/trusted-keys). Sign a bundle with: "
                    "python -m msrl_model.train ... --sign-key OUT.pem")
    parser.add_argument("out", type=Path, help="private key file to write (e.g. lab-signing.pem)")
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    parser.set_defaults(func=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    from msrl_model.infer.bundle.signing import generate_key

    private, public, fingerprint = generate_key(args.out, force=args.force)
    print(f"wrote private key {private} (keep it secret) and public key {public} (key {fingerprint}); "
          f"sign bundles with --sign-key {private}; users trust them by copying {public.name} into their "
          "trusted-keys folder")
    return 0


__all__ = ["register", "run_keygen"]
