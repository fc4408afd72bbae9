"""What Ctrl-C and SIGTERM do to a run: stop it cleanly at a step while it trains, and take down
what it started (an embedded cluster, actors) before and after."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so that a run stopped while it starts (or
    saves) takes down what it started, an embedded cluster and actors, instead of leaving them
    running. Only the main thread can install handlers; elsewhere SIGTERM keeps its meaning."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event):
    """While training: the first Ctrl-C or SIGTERM sets `stop` (finish the step, checkpoint,
    exit); a second one raises KeyboardInterrupt (quit at once). Only the main thread can
    install handlers; elsewhere (a notebook's worker thread) signals keep their meaning."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
