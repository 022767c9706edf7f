"""The run folder's lock: one V3 run at a time in a `base_dir`.

    lock = RunLock(layout, wait=False)
    with lock:              # RunLockedError if another run holds base_dir/.v3.lock
        ...                 # re-entrant: the pipeline's steps nest inside run_full_pipeline

Two runs on one folder would both do all the work, one would resume the other's unfinished
training state, and both would read-modify-write the results file. The lock is a `filelock`
(installed with huggingface_hub; an OS lock, released when the holding process ends, even
when it is killed). Who holds it (pid, host, since when, the command) is written beside it,
in `.v3.lock.holder`, so that the second run can say so; `wait=True` (`--wait-lock`) waits
for the holder to finish instead.
"""
from __future__ import annotations

import os
import socket
import sys

from filelock import FileLock, Timeout

from v3_common import (DamagedFileError, RunLockedError, StorageError, atomic_write_json, log,
                       read_json, shorten, storage_error)
from v3_layout import RunLayout
from v3_results import now_iso


class RunLock:
    """A re-entrant lock on one run folder (see the module's docstring)."""

    def __init__(self, layout: RunLayout, *, wait: bool = False):
        self.layout, self.wait = layout, wait
        self._lock = FileLock(layout.lock_path, thread_local=False)
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def __enter__(self) -> "RunLock":
        if self._depth == 0:
            self._acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._release()

    def _acquire(self) -> None:
        try:
            self.layout.base_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            holder = self.holder()
            if not self.wait:
                raise RunLockedError(
                    f"{self.layout.base_dir} is in use by another V3 run ({holder}). Wait for "
                    f"it to finish, pass --wait-lock (wait_for_lock=True) to wait for it, or "
                    f"use another --base-dir. The lock ({self.layout.lock_path.name}) is "
                    f"released when that process ends.") from None
            log.warning("%s is in use by another V3 run (%s): waiting for it to finish",
                        self.layout.base_dir, holder)
            self._lock.acquire()
        except OSError as e:
            raise storage_error(self.layout.lock_path, e) from e
        try:
            atomic_write_json(self.layout.lock_holder_path, {
                "pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(),
                "command": shorten(" ".join(sys.argv), 200)})
        except StorageError:
            self._lock.release()
            raise

    def _release(self) -> None:
        try:
            self.layout.lock_holder_path.unlink(missing_ok=True)
        except OSError as e:  # the lock itself is released all the same
            log.warning("could not remove %s (%s)", self.layout.lock_holder_path, e)
        self._lock.release()

    def holder(self) -> str:
        """'pid 123 on host colab-1 since 2025-01-01T00:00:00Z: python v3_colab_training.py'"""
        try:
            h = read_json(self.layout.lock_holder_path, default=None)
        except DamagedFileError:
            h = None
        if not isinstance(h, dict):
            return "its pid and host are not recorded yet"
        text = f"pid {h.get('pid', '?')} on host {h.get('host', '?')} since {h.get('since', '?')}"
        return text + (f": {h['command']}" if h.get("command") else "")
