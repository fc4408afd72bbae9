"""The doorbell (raytf.exchange.doorbell) in-process: frames both ways, and what each side sees when the other dies."""

from __future__ import annotations

import os
import threading
import time

import pytest

from raytf.exchange import Reply, Status
from raytf.exchange.doorbell import Bell, Doorbell, ServerGone


def _until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def bell_path(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    return str(directory / "ps0-bell")


def test_a_push_and_its_answer_cross_with_every_field(bell_path):
    calls = []

    def serve(worker, base, steps, loss, finite):
        calls.append((worker, base, steps, loss, finite))
        return Reply(Status.DONE if steps == 3 else Status.OK, base + 1, payload=steps % 2, dropped=not finite)

    doorbell = Doorbell(bell_path, serve)
    try:
        assert oct(os.stat(bell_path).st_mode & 0o777) == "0o600"
        bell = Bell(bell_path, worker=5)
        bell.ring(10, 1, 2.5, True)
        assert bell.answer() == Reply(Status.OK, 11, 1, False)
        bell.ring(11, 2, None, False)  # no loss (not the first server), a non-finite gradient
        assert bell.answer() == Reply(Status.OK, 12, 0, True)
        bell.ring(12, 3, 0.25, True)
        assert bell.answer().status is Status.DONE
        assert calls == [(5, 10, 1, 2.5, True), (5, 11, 2, None, False), (5, 12, 3, 0.25, True)]
        bell.close()
    finally:
        doorbell.close()
    assert not os.path.exists(bell_path)


def test_a_push_served_with_none_is_answered_from_another_thread(bell_path):
    """A node's leader answers its members from the thread that received the server's answer
    (raytf.exchange.local_reduce): `serve` returns None and `Doorbell.answer` sends the reply later;
    the doorbell's own thread goes back to reading the next push meanwhile."""
    rung = threading.Event()

    def serve(worker, base, steps, loss, finite):
        rung.set()
        return None

    doorbell = Doorbell(bell_path, serve)
    try:
        bell = Bell(bell_path, worker=3)
        bell.ring(7, 1, None, True)
        assert rung.wait(10)
        answered = []
        waiter = threading.Thread(target=lambda: answered.append(bell.answer()), daemon=True)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive(), "a push served with None is not answered by the doorbell's thread"
        doorbell.answer(3, Reply(Status.OK, 8, 0, False))
        doorbell.answer(9, Reply(Status.OK, 8, 0, False))  # a worker that is not connected: nothing happens
        waiter.join(10)
        assert answered == [Reply(Status.OK, 8, 0, False)]
        bell.close()
        _until(lambda: doorbell.connected() == 0, "the worker's connection to end")
        doorbell.answer(3, Reply(Status.OK, 9, 0, False))  # gone meanwhile: skipped, no error
    finally:
        doorbell.close()


def test_a_dead_server_is_an_error_the_worker_can_handle(bell_path):
    """A server that dies (or is torn down) hangs up: the worker's wait ends with ServerGone, at once."""
    entered, release = threading.Event(), threading.Event()

    def serve(worker, base, steps, loss, finite):
        entered.set()
        release.wait(10)  # a push waiting at the barrier when the server goes
        return Reply(Status.OK, base)

    doorbell = Doorbell(bell_path, serve)
    bell = Bell(bell_path, worker=0)
    bell.ring(0, 1, None, True)
    assert entered.wait(10)
    doorbell.close()
    with pytest.raises(ServerGone):
        bell.answer()
    release.set()
    with pytest.raises(ServerGone):  # and every later push too
        bell.ring(1, 2, None, True)
        bell.answer()


def test_a_worker_that_dies_mid_push_leaves_the_server_serving_the_others(bell_path):
    entered, release = threading.Event(), threading.Event()

    def serve(worker, base, steps, loss, finite):
        if worker == 0:
            entered.set()
            release.wait(10)
        return Reply(Status.OK, base + 1)

    doorbell = Doorbell(bell_path, serve)
    try:
        dying = Bell(bell_path, worker=0)
        dying.ring(0, 1, None, True)
        assert entered.wait(10)
        dying.close()  # its process died while its push was waiting
        release.set()  # the barrier lets the push through: the answer has nobody to go to
        _until(lambda: doorbell.connected() == 0, "the dead worker's connection to end")
        alive = Bell(bell_path, worker=1)
        alive.ring(4, 5, None, True)
        assert alive.answer() == Reply(Status.OK, 5, payload=0)
        alive.close()
    finally:
        doorbell.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_another_users_process_is_hung_up_on():
    """The run's directory (0700) keeps others out; even where they can reach the socket, the
    server checks the peer's uid (SO_PEERCRED) and hangs up without serving it."""
    import shutil
    import tempfile

    reachable = tempfile.mkdtemp(prefix="raytf-bell-")  # under /tmp, whose parents everyone may traverse
    os.chmod(reachable, 0o755)
    path = os.path.join(reachable, "ps0-bell")
    served = []
    doorbell = Doorbell(path, lambda *args: served.append(args) or Reply(Status.OK, 0))
    os.chmod(path, 0o666)
    import socket

    from raytf.exchange.doorbell import HELLO, PUSH

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # another user's process: only system calls, then out
        try:
            os.setgid(65534)
            os.setuid(65534)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
            conn.sendall(HELLO.pack(0) + PUSH.pack(0, 1, 0.0, False, True))
            os.write(write, b"served" if conn.recv(64) else b"hung up")
        except (BrokenPipeError, ConnectionResetError):
            os.write(write, b"hung up")  # closed before the frames were even read
        except OSError as err:
            os.write(write, f"error: {err}".encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        answer = os.read(read, 64)
        os.waitpid(child, 0)
        assert answer == b"hung up"
        assert served == []
    finally:
        doorbell.close()
        shutil.rmtree(reachable)
