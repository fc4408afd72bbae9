"""A server process Ray restarted is not set up until the driver's rollback does it: a worker's call
to it (a restarted worker's rejoin, say) is told so, in a way the worker treats as a lost server."""

import pickle

import pytest

from raytf.exchange import ServerNotReady
from raytf.exchange.server import ParameterServer


@pytest.mark.parametrize("call", [
    lambda s: s.relink(1, "node"),
    lambda s: s.admit(1, 4),
    lambda s: s.current_version(),
    lambda s: s.pull(1),
    lambda s: s.push(1, 0, None, 1, None),
], ids=["relink", "admit", "current_version", "pull", "push"])
def test_a_restarted_server_says_it_is_not_set_up(call):
    with pytest.raises(ServerNotReady, match="parameter server 3 was restarted"):
        call(ParameterServer("run", 3))


def test_removing_a_worker_from_a_restarted_server_is_a_no_op():
    ParameterServer("run", 3).remove_worker(1)  # the rollback sets up every member anew


def test_the_error_survives_the_trip_between_actors():
    err = pickle.loads(pickle.dumps(ServerNotReady("parameter server 3 was restarted and is not set up yet")))
    assert isinstance(err, ServerNotReady) and "server 3" in str(err)


def test_an_error_of_a_push_on_a_connections_thread_is_raised_by_the_statistics_call():
    """A doorbell or wire thread has nobody to hand an error to: the server keeps it, and the driver's
    statistics call raises it (the run ends with it instead of rolling back into it again). Here the
    error is a real one: a push served before the server's set-up has no sparse tables to read."""
    server = ParameterServer("run", 3)
    with pytest.raises(AttributeError, match="tables"):
        server._rung(1, 0, 1, None, True)
    with pytest.raises(AttributeError, match="tables"):
        server.stats()
