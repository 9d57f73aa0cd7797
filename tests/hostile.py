"""Helpers for tests that feed onnxinv hostile files (FIFOs that would block a reader)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def unblocking(fifo: Path, after: float = 3.0) -> Iterator[list[bool]]:
    """Make ``fifo`` and, if a reader is still blocked on it after ``after`` seconds, open and close its
    write end so the reader sees end of file instead of hanging the test run.

    Yields a list that holds True once a blocked reader had to be released this way.
    """
    os.mkfifo(fifo)
    released: list[bool] = []
    stop = threading.Event()

    def watch() -> None:
        if stop.wait(after):
            return
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when nobody reads: nothing blocked
        except OSError:
            return
        released.append(True)
        os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield released
    finally:
        stop.set()
        thread.join()
