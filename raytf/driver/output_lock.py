"""One run at a time in an output_dir: two runs writing the same checkpoints would mix them (a
manifest naming shards of the other run, a checkpoint deleted under the other's write). The driver
holds an advisory lock (flock) on `output_dir/.raytf.lock` for the whole run and removes the file at the
end; the kernel drops the lock when the process ends, however it ends, so a crashed run never leaves
it stuck (only the file, which the next run takes over).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from raytf.errors import ConfigError

LOCK_NAME = ".raytf.lock"


@contextlib.contextmanager
def holding(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir` (which exists) for this run; a ConfigError at once if another run holds it."""
    lock = _locked(output_dir / LOCK_NAME)
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock.name)  # while still locked: a run that opens it now finds another file, or none
        lock.close()  # and the lock goes with it


def _locked(path: Path):
    """The lock file, open and locked; the file at `path` when it returns, not one removed meanwhile."""
    while True:
        lock = open(path, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "a process that did not say which"
            lock.close()
            raise ConfigError(f"output_dir {path.parent} is in use by another run ({holder}): two runs there would "
                              "mix their checkpoints.",
                              "Wait for that run to end, or give this one another output_dir "
                              "(e.g. --set output_dir=runs/other).") from None
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                return lock
        except FileNotFoundError:
            pass
        lock.close()  # the run that held it ended and removed it meanwhile: take the one there now
