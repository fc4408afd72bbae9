"""The exchange protocol in-process: real threads for the workers, a list of floats for the shard.

No Ray and no TensorFlow: each worker's call runs in a thread of its own, as in the threaded
server actor, against `Exchange` and its policies. A "still waiting" check gives the thread a
moment to return (it would return at once if released); everything else is exact.
"""

from __future__ import annotations

import threading

import pytest

from raytf.exchange import POLICIES, Exchange, Push, Status, make_policy


class Shard:
    """A one-number shard: apply subtracts the mean gradient; publish and checkpoint are recorded."""

    def __init__(self) -> None:
        self.value = 0.0
        self.updates: list[list[float]] = []
        self.published: list[tuple[int, int]] = []
        self.checkpoints: list[int] = []

    def apply(self, grads: list) -> None:
        self.updates.append(list(grads))
        self.value -= sum(grads) / len(grads)

    def publish(self, version: int, worker: int) -> None:
        self.published.append((version, worker))

    def checkpoint(self, version: int) -> None:
        self.checkpoints.append(version)


def exchange(mode: str = "sync", workers: int = 3, target: int = 100, every: int = 0, **options) -> tuple[Exchange, Shard]:
    shard = Shard()
    return Exchange(make_policy(mode, workers, **options), shard, workers=workers, target=target, every_versions=every), shard


class Call:
    """One worker's push (or pull) in a thread of its own."""

    def __init__(self, fn, *args) -> None:
        self.outcome = None
        self.thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self.thread.start()

    def _run(self, fn, *args) -> None:
        self.outcome = fn(*args)

    def waiting(self) -> bool:
        self.thread.join(0.15)
        return self.thread.is_alive()

    def result(self):
        self.thread.join(10)
        assert not self.thread.is_alive(), "the call never returned"
        return self.outcome


def push(ex: Exchange, worker: int, grad: float | None = 1.0, base: int | None = None, finite: bool = True) -> Call:
    return Call(ex.push, Push(worker, ex.version if base is None else base, finite=finite), grad)


# -- sync --------------------------------------------------------------------------------------


def test_barrier_applies_the_mean_once_every_member_pushed():
    ex, shard = exchange("sync", workers=3)
    first, second = push(ex, 0, 1.0), push(ex, 1, 2.0)
    assert first.waiting() and second.waiting() and ex.version == 0
    third = push(ex, 2, 6.0)
    for call in (first, second, third):
        assert call.result().status is Status.OK and call.result().version == 1
    assert shard.updates == [[1.0, 2.0, 6.0]] and shard.value == -3.0
    stats = ex.stats()
    assert stats.applied == {0: 1, 1: 1, 2: 1} and stats.dropped == {} and stats.mean_update_size == 3
    assert stats.staleness.max == 0


def test_a_non_finite_gradient_counts_for_the_barrier_but_not_for_the_mean():
    ex, shard = exchange("sync", workers=2)
    bad = push(ex, 0, None, finite=False)
    good = push(ex, 1, 4.0)
    assert bad.result().version == good.result().version == 1
    assert shard.updates == [[4.0]] and ex.stats().nonfinite_skipped == 1


def test_backup_workers_apply_the_first_quorum_and_drop_the_late_one():
    ex, shard = exchange("sync", workers=3, backup_workers=1)
    first = push(ex, 0, 1.0)
    assert first.waiting()
    second = push(ex, 1, 3.0)
    assert first.result().version == second.result().version == 1
    assert shard.updates == [[1.0, 3.0]]
    late = push(ex, 2, 100.0, base=0)  # computed on version 0: its round is over
    outcome = late.result()
    assert outcome.dropped and outcome.status is Status.OK and outcome.version == 1
    assert (1, 2) in shard.published  # answered at once, with the new parameters
    assert shard.updates == [[1.0, 3.0]]
    stats = ex.stats()
    assert stats.applied == {0: 1, 1: 1} and stats.dropped == {2: 1} and stats.mean_update_size == 2


def test_backup_workers_zero_waits_for_every_member():
    ex, _ = exchange("sync", workers=3, backup_workers=0)
    calls = [push(ex, 0), push(ex, 1)]
    assert all(call.waiting() for call in calls)
    push(ex, 2).result()
    assert [call.result().version for call in calls] == [1, 1]


@pytest.mark.parametrize("backups", [0, 1])
def test_sync_a_member_dying_while_others_wait_completes_the_round(backups):
    ex, shard = exchange("sync", workers=3, backup_workers=backups)
    calls = [push(ex, 0, 2.0)] + ([push(ex, 1, 4.0)] if not backups else [])
    assert all(call.waiting() for call in calls)
    ex.remove(2)
    if backups:  # quorum is 2 of 3; with 2 dead... one is left: a quorum of the live ones
        ex.remove(1)
    assert all(call.result().version == 1 for call in calls)
    assert shard.updates == [[2.0, 4.0]] if not backups else [[2.0]]
    assert ex.stats().members == ((0, 1) if not backups else (0,))


def test_rejoin_is_admitted_from_a_future_round_only():
    ex, shard = exchange("sync", workers=2)
    ex.remove(1)
    push(ex, 0).result()  # round 1 without worker 1
    assert ex.version == 1
    assert not ex.admit(1, first_round=1)  # that round is over
    assert ex.admit(1, first_round=3)
    start = Call(ex.pull, 1, 2)  # the rejoining worker starts from version first_round - 1
    assert start.waiting()
    push(ex, 0).result()  # round 2: worker 1 is not required yet
    assert start.result().version == 2
    alone = push(ex, 0)
    assert alone.waiting(), "round 3 needs the admitted worker"
    push(ex, 1, base=2).result()
    assert alone.result().version == 3 and ex.stats().members == (0, 1)



def test_every_worker_dying_at_once_lets_the_rejoiners_start():
    """All workers of a sync run lost together (their node went): nobody is left to build the round
    before the rejoiners' first (a worker rejoins from the round after next, so that every server
    admits it to the same one), so it passes with nothing applied, and they train on from there."""
    ex, shard = exchange("sync", workers=2)
    round_one = [push(ex, 0), push(ex, 1)]
    assert [call.result().version for call in round_one] == [1, 1]
    half = push(ex, 0)  # round 2: worker 0 pushed, then both die
    assert half.waiting()
    ex.remove(0)
    ex.remove(1)
    assert ex.version == 1 and ex.admit(0, first_round=3) and ex.admit(1, first_round=3)
    starts = [Call(ex.pull, w, 2) for w in (0, 1)]
    assert [start.result().version for start in starts] == [2, 2]  # round 2 passed, nothing applied
    assert len(shard.updates) == 1 and half.result().version == 2  # (the dead one's call ends too)
    first = push(ex, 0, 3.0)
    assert first.waiting(), "round 3 is both rejoiners'"
    push(ex, 1, 5.0).result()
    assert first.result().version == 3 and shard.updates[-1] == [3.0, 5.0]


def test_the_last_member_dying_while_a_rejoiner_waits_lets_it_start():
    ex, shard = exchange("sync", workers=2)
    ex.remove(1)
    assert ex.admit(1, first_round=2)  # worker 0 is building round 1
    start = Call(ex.pull, 1, 1)
    assert start.waiting()
    ex.remove(0)  # and dies before pushing it
    assert start.result().version == 1 and shard.updates == []
    assert ex.stats().members == ()

# -- async and ssp -----------------------------------------------------------------------------


def test_async_applies_on_arrival_and_staleness_is_measured_from_the_gradients_version():
    ex, shard = exchange("async", workers=1)
    assert push(ex, 0, 1.0, base=0).result().version == 1
    # One worker overlapping compute and push: its next gradient was computed on version 0 as well.
    assert push(ex, 0, 1.0, base=0).result().version == 2
    stats = ex.stats()
    assert stats.staleness.max == 1 and stats.staleness.histogram == {0: 1, 1: 1}
    assert shard.updates == [[1.0], [1.0]]


def test_async_a_member_dying_blocks_nobody():
    ex, _ = exchange("async", workers=2)
    ex.remove(1)
    assert push(ex, 0).result().status is Status.OK and ex.stats().members == (0,)


def test_ssp_waits_beyond_the_bound_and_is_released_when_the_slowest_catches_up():
    ex, _ = exchange("ssp", workers=2, staleness_bound=1)
    assert not push(ex, 0).result().dropped  # clocks 1, 0: within the bound
    ahead = push(ex, 0)  # clocks 2, 0: two ahead of the slowest
    assert ahead.waiting()
    push(ex, 1).result()  # the slowest moves to 1
    outcome = ahead.result()
    assert outcome.status is Status.OK and outcome.waited > 0
    stats = ex.stats()
    assert stats.clock_skew_max == 2  # bound + 1: the lead at which a worker waits
    assert stats.waited[0] > 0 and stats.applied == {0: 2, 1: 1}


def test_ssp_a_member_dying_releases_those_waiting_for_it():
    ex, _ = exchange("ssp", workers=2, staleness_bound=0)
    ahead = push(ex, 0)
    assert ahead.waiting()
    ex.remove(1)
    assert ahead.result().status is Status.OK
    assert push(ex, 0).result().status is Status.OK  # and nobody waits for the dead one later


def test_ssp_a_rejoining_worker_starts_at_the_slowest_clock():
    ex, _ = exchange("ssp", workers=3, staleness_bound=1)
    for _ in range(3):
        push(ex, 0).result()
        push(ex, 1).result()
        push(ex, 2).result()
    ex.remove(2)
    push(ex, 0).result()
    push(ex, 1).result()  # clocks 4, 4
    assert ex.admit(2, first_round=0)
    assert push(ex, 0).result().status is Status.OK  # 5 vs the rejoiner's 4: within the bound
    assert ex.stats().members == (0, 1, 2)


# -- every policy ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(POLICIES))
def test_stop_at_a_target_releases_everyone_with_done_and_checkpoints_once(mode):
    ex, shard = exchange(mode, workers=2, target=10, staleness_bound=0)
    waiting = push(ex, 0)
    if mode == "async":
        assert waiting.result().status is Status.OK  # applied on arrival: nobody waits
    else:
        assert waiting.waiting()
    assert ex.set_target(ex.version)
    if mode != "async":
        assert waiting.result().status is Status.DONE
    assert shard.checkpoints == [ex.version]
    assert push(ex, 1).result().status is Status.DONE  # nothing more is applied
    assert not ex.set_target(ex.version - 1) if ex.version else True


@pytest.mark.parametrize("mode", sorted(POLICIES))
def test_abort_releases_every_waiter_with_rollback_and_publishes_nothing(mode):
    ex, shard = exchange(mode, workers=2, staleness_bound=0)
    if mode == "async":
        push(ex, 0).result()
        calls = [Call(ex.pull, 1, 50)]  # a rejoiner's pull waiting for a future version
    else:
        calls = [push(ex, 0)]
    assert all(call.waiting() for call in calls)
    published = len(shard.published)
    ex.abort()
    assert [call.result().status for call in calls] == [Status.ROLLBACK]
    assert len(shard.published) == published


@pytest.mark.parametrize("mode", sorted(POLICIES))
def test_many_threads_many_steps_reach_the_target(mode):
    workers, steps = 4, 30
    policy = make_policy(mode, workers, backup_workers=1 if mode == "sync" else 0, staleness_bound=2)
    shard = Shard()
    ex = Exchange(policy, shard, workers=workers, target=steps * policy.updates_per_step, every_versions=policy.updates_per_step * 10)

    def work(worker: int) -> None:
        version, done = 0, 0
        while True:
            outcome = ex.push(Push(worker, version, steps_done=done + 1), 1.0)
            done += 1
            version = outcome.version
            if outcome.status is not Status.OK:
                return

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    stats = ex.stats()
    assert stats.version == steps * policy.updates_per_step
    assert shard.checkpoints == list(range(policy.updates_per_step * 10, stats.version + 1, policy.updates_per_step * 10))
    if mode == "ssp":
        assert stats.clock_skew_max <= 3
    if mode == "sync":
        assert stats.mean_update_size == 3  # workers - backups per round


def test_every_mode_of_the_config_has_a_policy():
    import typing

    from raytf.config import DistributionConfig

    modes = typing.get_args(DistributionConfig.model_fields["mode"].annotation)
    assert set(modes) == set(POLICIES)


class EarlyShard(Shard):
    """A shard whose backend applies a round's gradients early (as the sparse SGD rows are)."""

    def __init__(self) -> None:
        super().__init__()
        self.early: list[tuple[float, int]] = []

    def apply_early(self, grad, expected: int) -> bool:
        self.early.append((grad, expected))
        return True


@pytest.mark.parametrize("backups", [0, 1])
def test_sync_applies_each_gradient_of_a_round_early_but_the_last_and_never_stops_mid_round(backups):
    shard = EarlyShard()
    ex = Exchange(make_policy("sync", 3, backup_workers=backups), shard, workers=3, target=100)
    first = Call(ex.push, Push(0, 0, 1, None, True), 1.0)
    assert first.waiting()
    Call(ex.push, Push(2, 0, 1, None, False), None)  # not finite: nothing to apply early
    if backups:  # the round's gradients are known only at its end
        assert shard.early == [] and not ex.partial_round
        return
    assert shard.early == [(1.0, 3)] and ex.partial_round
    assert not ex.set_target(0)  # part of round 1 is applied: no stop at version 0
    last = Call(ex.push, Push(1, 0, 1, None, True), 2.0)
    assert first.result().version == last.result().version == 1
    assert shard.early == [(1.0, 3)], "the round's last gradient is applied with the round"
    assert shard.updates == [[1.0, 2.0]] and not ex.partial_round
