"""examples/bench_baselines.py's wire floor: the round trips move the bytes it says, one round per
call, each round's bytes back before the next starts (no Ray: a sink on a thread, on 127.0.0.1)."""

import threading

import numpy as np

from examples.bench_baselines import RoundTrips, WireSink


def test_every_round_sends_its_bytes_and_reads_as_many_back():
    nbytes = 3 * 1024 * 1024 + 17  # not a multiple of any chunk
    sink = WireSink()
    host, port = sink.listen(nbytes, host="127.0.0.1")
    served = {}
    thread = threading.Thread(target=lambda: served.update(sink.serve(warmup=1)))
    thread.start()
    rounds = RoundTrips(host, port, nbytes)
    rounds.out[:] = np.arange(nbytes) % 251  # the sink sends back what it read
    for _ in range(4):
        rounds.next_round()
    rounds.close()
    thread.join(timeout=30)
    assert served["rounds"] == 4 and served["cpu_ms_per_round"] >= 0
    np.testing.assert_array_equal(rounds.back, rounds.out)
