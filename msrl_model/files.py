"""Writing files so that nothing half-written is ever mistaken for a result.

Every output of MSRL Studio (feature files, result JSON/CSV, reports, bundles, run reports) is
written to a uniquely named temporary file beside its destination and renamed over it once complete
and closed (:func:`os.replace` is atomic on one file system). A failure or a kill part-way leaves
the destination as it was and, at worst, a ``.<name>.<random>.tmp`` file that
:func:`remove_orphaned_temporaries` deletes on the next run. While a temporary file is being
written its writer holds an exclusive ``flock`` on it, so the cleanup can tell a live writer's file
(locked) from one left by a killed process (unlocked) at once, without waiting for it to age; where
``flock`` does not exist (Windows) only files older than an hour are removed.

Failures to write (read-only folder, disk full, quota, ...) come back as
:class:`~msrl_model.errors.OutputError` - an ``OSError`` with a one-line message that says what to
do - and :func:`check_writable` finds them before long work starts: it creates and removes a probe
file in the folder and compares the free space with the expected output size.

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
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from msrl_model.errors import OutputError

try:  # POSIX: a live writer holds an exclusive lock on its temporary file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TMP_SUFFIX = ".tmp"
SPACE_MARGIN_BYTES = 64 * 1024  # free space kept in reserve beyond an output's expected size
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def output_error(err: OSError, path: str | os.PathLike) -> OutputError:
    """A one-line :class:`OutputError` for an ``OSError`` raised while writing ``path``."""
    if isinstance(err, OutputError):
        return err
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    code = err.errno
    if code in _NO_SPACE:
        text = (f"no space left on the device to write {path}; free some disk space or choose an output "
                "folder on another disk, then run the same command again")
    elif code in _NO_PERMISSION or isinstance(err, PermissionError):
        text = (f"cannot write to {folder}: permission denied or a read-only file system; choose a writable "
                "output folder (or fix its permissions) and run again")
    else:
        reason = " ".join((err.strerror or str(err) or type(err).__name__).split())
        text = f"cannot write {path} ({reason}); check the output folder and run again"
    return OutputError(text, code)


def check_writable(folder: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Create ``folder`` if needed and make sure a file can be written there with ``need_bytes`` free.

    Writes and removes a uniquely named probe file (so read-only mounts, permissions and ACLs are
    all tested, even for root) and compares :func:`shutil.disk_usage` with ``need_bytes`` plus a
    small margin. Raises :class:`OutputError`; returns the folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".msrl-write-probe.", suffix=TMP_SUFFIX, dir=folder)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # another run's cleanup leaves a locked file alone
            os.write(fd, b"0")
        finally:
            if fcntl is None:  # pragma: no cover - Windows cannot delete an open file
                os.close(fd)
                fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            if fd >= 0:
                os.close(fd)
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise output_error(err, folder) from None
    if need_bytes and free < need_bytes + SPACE_MARGIN_BYTES:
        raise OutputError(f"not enough free space in {folder}: about {_mb(need_bytes)} needed, {_mb(free)} free; "
                          "free some disk space or choose an output folder on another disk", errno.ENOSPC)
    return folder


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as err:
        raise output_error(err, path) from None
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes: marks the file as being written
    else:  # pragma: no cover - Windows cannot rename a file that is still open
        os.close(fd)
        fd = -1
    tmp = Path(name)
    try:
        try:
            yield tmp
            tmp.chmod(output_mode(secret))
            os.replace(tmp, path)
        except OutputError:
            raise
        except OSError as err:
            if err.errno in _NO_SPACE or err.errno in _NO_PERMISSION or isinstance(err, PermissionError):
                raise output_error(err, path) from err
            raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if fd >= 0:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: str | bytes | memoryview, *, secret: bool = False) -> Path:
    """Write ``data`` (text as UTF-8, or bytes / any bytes-like buffer) to ``path`` atomically; returns
    ``path``. Raises :class:`OutputError` (nothing is left behind) when it cannot be written."""
    path = Path(path)
    with atomic_path(path, secret=secret) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def _is_orphan(tmp: Path, now: float, older_than_s: float) -> bool:
    """True when no live writer holds ``tmp`` (unlocked), or, without flock, when it is old."""
    if fcntl is None:
        return now - tmp.stat().st_mtime > older_than_s
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a writer in another process is writing it right now
    else:
        return True
    finally:
        os.close(fd)


def remove_orphaned_temporaries(folder: str | os.PathLike, older_than_s: float = 3600.0) -> list[Path]:
    """Delete ``.<name>.<random>.tmp`` files in ``folder`` (not recursive) left by a killed writer.

    A writer running right now in another process keeps its temporary file: it holds an exclusive
    lock on it (see the module docstring); where locks do not exist only files older than
    ``older_than_s`` go. Never raises (a read-only folder just keeps its files). Returns the files
    removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        if not folder.is_dir():
            return []
        candidates = list(folder.glob(f".*{TMP_SUFFIX}"))
    except OSError:
        return []
    now = time.time()
    for tmp in candidates:
        try:
            if tmp.is_file() and not tmp.is_symlink() and _is_orphan(tmp, now, older_than_s):
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # gone meanwhile, or not ours to delete
    return removed


__all__ = ["SPACE_MARGIN_BYTES", "atomic_path", "atomic_write", "check_writable", "output_error", "output_mode",
           "remove_orphaned_temporaries"]
