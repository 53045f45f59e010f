"""Every file resnetcls writes goes through here: a kill or a full disk at any instant leaves either the old
file or the new one, never half of one, and never a temporary behind.

write_atomic(): the bytes (or a writer callback) go to a temporary file in the same folder (so the rename
cannot cross file systems), are flushed and fsynced, renamed over the target, and the folder is fsynced so the
rename itself survives a power cut. replace_dir(): a folder built elsewhere (new_dir_beside) takes the place
of an existing one; the old one is kept, renamed aside, until the new one is in place (recover_dir() puts it
back after a kill between the two renames). Failures become UserErrors naming the path; ENOSPC also says how
many bytes were needed. sha256_file() hashes what was written (model files, checkpoints, downloaded weights).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError

DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
OLD_SUFFIX = ".old"
UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it) and put back
os.umask(UMASK)


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space for an unprivileged user on the file system holding folder (None when unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are durable enough without this
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. certain network mounts) refuse fsync on a folder
    finally:
        os.close(fd)


def write_error(path: Path, error: OSError, needed: int | None, at_least: bool = False) -> UserError:
    """The one-line message for a failed write: ENOSPC names the bytes needed (at_least: a lower bound, what
    was written before the disk filled up) and free; other errors give the reason."""
    if error.errno in DISK_FULL:
        free = free_bytes(path.parent)
        need = f"needs {'more than ' if at_least else ''}{needed:,} bytes" if needed else "needs more space"
        have = f", {free:,} free" if free is not None else ""
        return UserError(
            f"{path}: no space left on the device ({need}{have}); free some space or write elsewhere"
        )
    return UserError(f"{path}: cannot write: {error.strerror or error}")


def write_atomic(
    path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object], size_hint: int | None = None
) -> Path:
    """Write data (bytes, or a callback that writes to a binary file) to path atomically and durably.

    size_hint: the bytes a callback will write, for the message when the disk is full.
    """
    path = Path(path)
    needed = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else size_hint
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; a written file should look like any other
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
        raise write_error(path, e, needed or written or None, at_least=not needed) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """write_atomic for text (UTF-8)."""
    return write_atomic(path, text.encode("utf-8"))


def new_dir_beside(path: Path) -> Path:
    """An empty temporary folder next to path (same file system, so it can be renamed onto path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    os.chmod(new, 0o777 & ~UMASK)  # mkdtemp makes 0700; the model directory should look like any other
    return new


def csv_text(rows) -> str:
    """Rows as CSV text (the csv module's default dialect), for write_text_atomic."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}{OLD_SUFFIX}")


def recover_dir(path: Path) -> Path:
    """path, or the previous version kept aside by a replace_dir() that was killed between its two renames."""
    old = _old(path)
    if not path.exists() and old.is_dir():
        try:
            os.rename(old, path)
        except OSError:  # a read-only folder: read the previous version where it is
            return old
    return path


def replace_dir(new: Path, path: Path) -> Path:
    """Put the complete folder `new` in the place of `path`; the old one is deleted only once new is there."""
    old = _old(path)
    if not path.exists() and old.is_dir():
        os.rename(old, path)  # a kill between the two renames below: the previous version goes back first
    if old.exists():
        shutil.rmtree(old)  # a leftover of an earlier, completed replacement
    if path.exists():
        os.rename(path, old)
    os.rename(new, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


@contextmanager
def building_dir(path: str | os.PathLike):
    """`with building_dir(p) as tmp:` fill tmp; on success it replaces p as a whole, on failure it goes."""
    path = Path(path)
    try:
        tmp = new_dir_beside(path)
    except OSError as e:
        raise write_error(path, e, None) from None
    try:
        yield tmp
        _fsync_dir(tmp)  # the files inside were written with write_atomic: already durable
        replace_dir(tmp, path)
    except OSError as e:
        raise write_error(path, e, None) from None
    except UserError as e:  # a file inside failed: name it where the user will look for it, not in tmp
        raise UserError(str(e).replace(str(tmp), str(path))) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
