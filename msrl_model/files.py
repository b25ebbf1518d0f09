"""Writing files so that nothing half-written is ever mistaken for a result.

Every output of MSRL Studio (feature files, result JSON/CSV, reports, bundles, run reports) is
written to a uniquely named temporary file beside its destination and renamed over it once complete
and closed (:func:`os.replace` is atomic on one file system). A failure or a kill part-way leaves
the destination as it was and, at worst, a ``.<name>.<random>.tmp`` file that
:func:`remove_orphaned_temporaries` deletes on the next run.

File mode policy: outputs are ``0644`` (``0666`` less the process umask), like any file a user
writes, so colleagues and batch jobs can read them; :func:`tempfile.mkstemp` alone would leave
them ``0600``. Pass ``secret=True`` for the rare file that must stay private (e.g. a signing key).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(d / "a.json", '{"ok": true}\\n').read_text()
    '{"ok": true}\\n'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"


def output_mode(secret: bool = False) -> int:
    """The permission bits for a finished output: 0600 when ``secret``, else 0666 less the umask."""
    if secret:
        return 0o600
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, secret: bool = False, suffix: str = TMP_SUFFIX) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; on success rename it over ``path``.

    The caller writes the temporary path with any library (h5py, QPdfWriter, zipfile). On an
    exception the temporary file is removed and ``path`` is untouched. ``suffix`` lets writers that
    look at the extension (e.g. an SVS writer) see the one they expect.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(output_mode(secret))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes, *, secret: bool = False) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path, secret=secret) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return path


def remove_orphaned_temporaries(folder: str | os.PathLike, older_than_s: float = 3600.0) -> list[Path]:
    """Delete ``.<name>.<random>.tmp`` files in ``folder`` (not recursive) left by a killed writer.

    Only files older than ``older_than_s`` go, so a writer running right now in another process
    keeps its temporary file. Returns the files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # gone meanwhile, or not ours to delete
    return removed


__all__ = ["atomic_path", "atomic_write", "output_mode", "remove_orphaned_temporaries"]
