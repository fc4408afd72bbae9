"""examples/exchange_costs.py prints what moving a buffer costs by each path; its local part runs
here on a small buffer (the Ray part is what every training test exercises)."""

from examples.exchange_costs import local_costs


def test_the_local_paths_are_all_measured():
    costs = local_costs(4096, repeats=3)
    assert set(costs) == {"shared memory: copy into the slot", "doorbell: 26-byte push, 18-byte answer (AF_UNIX)",
                          "loopback TCP: the buffer out and one back"}
    assert all(ms > 0 for ms in costs.values())
