"""Writes that a kill cannot leave half-done, and a lock for builds shared between processes.

- `atomic_file(path)`: write a temporary file next to `path`, fsync it, then `os.replace`
  it onto `path`. A reader sees the old file or the new one, never a truncated one.
- `atomic_dir(path)`: the same for a directory (a data cache): built under a temporary
  name, renamed into place when complete.
- `remove_stale_tmp(parent)`: temporary files/directories left by processes of this host
  that died (kill -9, OOM) are deleted; those of live processes are kept.
- `build_lock(path)`: an exclusive `filelock.FileLock` on `<parent>/.<name>.lock`, so two
  processes that would build the same thing build it once (the second waits, then reuses).
  The operating system releases it when its holder dies.

Temporary names are `.tmp-<pid>-<host hash>-<name>`: the pid and host tell whether the
writer is still alive.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def tmp_prefix() -> str:
    return f".tmp-{os.getpid()}-{HOST}-"


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Yield a file object; on success its content replaces `path` in one rename."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix() + os.path.basename(path) + ".", dir=parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private
        os.replace(tmp, path)
        fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write one item per line (UTF-8 whatever the locale, each ended by a newline) to `path`,
    atomically: the form the sacrebleu CLI reads. A line break inside an item would shift every
    later line against its reference, so it becomes a space (the same tokens for BLEU and
    chrF), with a warning that counts them."""
    lines = list(lines)
    broken = [i for i, line in enumerate(lines) if "\n" in line or "\r" in line]
    if broken:
        log.warning("%s: %d item(s) contain a line break (first: item %d); written with spaces in its place "
                    "so that line i stays sentence i", os.fspath(path), len(broken), broken[0])
        for i in broken:
            lines[i] = " ".join(lines[i].splitlines())
    with atomic_file(path, "wb") as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))


class atomic_dir:
    """Context manager: yields a temporary directory that becomes `path` on success.

    On an exception the temporary directory is deleted and `path` is untouched. If another
    process created `path` meanwhile (same key, same content), its copy is kept.
    """

    def __init__(self, path: str):
        self.path = path
        self.tmp = ""

    def __enter__(self) -> str:
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        remove_stale_tmp(parent)
        self.tmp = tempfile.mkdtemp(prefix=tmp_prefix(), dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; caches are shared
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    os.replace(self.tmp, self.path)
                    fsync_dir(os.path.dirname(self.path))
                except OSError:
                    if not os.path.isdir(self.path):
                        raise
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_tmp(parent: str) -> list[str]:
    """Delete `.tmp-<pid>-<host>-*` entries of `parent` whose process (on this host) is dead."""
    removed = []
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return removed
    for name in names:
        parts = name.split("-")
        if not name.startswith(".tmp-") or len(parts) < 4 or parts[2] != HOST:
            continue
        try:
            pid = int(parts[1])
        except ValueError:
            continue
        if _pid_alive(pid):
            continue
        path = os.path.join(parent, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        removed.append(name)
    return removed


@contextlib.contextmanager
def build_lock(path: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock for building `path` (lock file `<parent>/.<name>.lock`).

    `on_wait(message)` is called once if another process holds it (then this one waits).
    """
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    lock = FileLock(os.path.join(parent, f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        (on_wait or log.info)(f"Waiting for another process that is building {path} (lock {lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
