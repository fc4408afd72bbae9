"""The summary's `restarts` records, from the deaths raytf saw and the restart counts Ray keeps
(raytf.supervisor): the counting and the outcomes, without Ray (Ray's answers are given)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raytf import supervisor
from raytf.supervisor import (AFTER_WORK, ENDED, GAVE_UP, LOST_AGAIN, REJOINED, RESTARTING, RESTARTING_AFTER_WORK,
                              RESTORED, Supervisor, deaths_known_to_ray, settle, unrecorded)


def record(index: int, recovery: str, role: str = "worker", step: int = 10) -> dict:
    return {"role": role, "index": index, "step": step, "recovery": recovery}


@pytest.mark.parametrize("restarts, state, deaths", [
    (0, "ALIVE", 0), (1, "RESTARTING", 1), (2, "ALIVE", 2), (3, "DEAD", 4), (0, "DEAD", 1)])
def test_deaths_ray_knows_are_one_per_restart_and_one_more_when_it_gave_up(restarts, state, deaths):
    assert deaths_known_to_ray(restarts, state) == deaths


def test_only_the_deaths_raytf_has_not_recorded_for_that_very_actor_are_missing():
    records = [record(1, REJOINED), record(0, REJOINED), record(1, "ps", role="ps")]
    assert unrecorded(records, "worker", 1, 2, "ALIVE") == 1
    assert unrecorded(records, "worker", 1, 1, "RESTARTING") == 0
    assert unrecorded(records, "worker", 2, 1, "DEAD") == 2
    assert unrecorded(records, "ps", 1, 1, "ALIVE") == 0
    # Ray's count lags behind a failed call raytf has seen: nothing to add, nothing taken away.
    assert unrecorded(records, "worker", 1, 0, "ALIVE") == 0


@pytest.mark.parametrize("pending, state, outcome", [
    (RESTARTING_AFTER_WORK, "ALIVE", AFTER_WORK),
    (RESTARTING_AFTER_WORK, "RESTARTING", ENDED),
    (RESTARTING_AFTER_WORK, "DEAD", GAVE_UP),
    (RESTARTING, "RESTARTING", ENDED),
    (RESTARTING, "ALIVE", ENDED),  # back, but it never rejoined
    (RESTARTING, "DEAD", GAVE_UP),
    (RESTARTING_AFTER_WORK, "unknown", ENDED),
])
def test_a_pending_record_settles_by_what_ray_says_at_the_end(pending, state, outcome):
    records = [record(1, REJOINED), record(1, pending)]
    settle(records, "worker", 1, state)
    assert [r["recovery"] for r in records] == [REJOINED, outcome]


def test_pending_records_followed_by_another_death_had_come_back():
    records = [record(1, RESTARTING), record(1, RESTARTING_AFTER_WORK), record(1, RESTARTING_AFTER_WORK),
               record(0, RESTARTING_AFTER_WORK)]
    settle(records, "worker", 1, "DEAD")
    assert [r["recovery"] for r in records] == [LOST_AGAIN, AFTER_WORK, GAVE_UP, RESTARTING_AFTER_WORK]


class FakeRay:
    """What Ray's GCS says of each actor: (restarts, state), by handle."""

    def __init__(self, **known: tuple[int, str]) -> None:
        self.known = known

    def __call__(self, handle: str) -> tuple[int, str] | None:
        return self.known.get(handle)


def bare_supervisor(workers: int = 2, servers: int = 1, step: int = 300) -> Supervisor:
    """A Supervisor with just what recording deaths needs (no actors, no Ray)."""
    sup = Supervisor.__new__(Supervisor)
    sup.config = SimpleNamespace(distribution=SimpleNamespace(max_restarts=3))
    sup.actors = SimpleNamespace(workers=[f"w{i}" for i in range(workers)], servers=[f"ps{j}" for j in range(servers)])
    sup.restarts, sup.bare, sup.events = [], set(), []
    sup.on_event = sup.events.append
    sup.worker_restarts, sup.server_restarts = [0] * workers, [0] * servers
    sup.stats, sup.start_step = None, step
    return sup


def test_a_death_after_the_work_is_recorded_once_announced_once_and_settled(monkeypatch):
    sup = bare_supervisor()
    sup._count_restart("worker", 1, 80, RESTARTING)  # the failed run call of a mid-run kill
    sup._rejoined(1)
    monkeypatch.setattr(supervisor, "actor_state", FakeRay(w0=(0, "ALIVE"), w1=(2, "RESTARTING"), ps0=(0, "ALIVE")))
    sup._reconcile([("worker", 1, "w1")])  # in the loop: worker 1's run had ended
    sup._reconcile([("worker", 1, "w1")])  # asked again: nothing new
    monkeypatch.setattr(supervisor, "actor_state", FakeRay(w0=(0, "ALIVE"), w1=(2, "ALIVE"), ps0=(0, "ALIVE")))
    sup.finish()
    assert sup.restarts == [record(1, REJOINED, step=80), record(1, AFTER_WORK, step=300)]
    assert [e for e in sup.events if "was lost" in e] == ["Worker 1 was lost near step 300, after its work was done; "
                                                          "Ray restarts it."]
    assert sup.bare == {1} and sup.worker_restarts == [0, 2]


def test_deaths_only_ray_saw_are_found_at_the_end_for_every_actor(monkeypatch):
    sup = bare_supervisor()
    monkeypatch.setattr(supervisor, "actor_state", FakeRay(w0=(1, "RESTARTING"), w1=(3, "DEAD"), ps0=(1, "ALIVE")))
    sup.finish()
    assert [(r["role"], r["index"], r["recovery"]) for r in sup.restarts] == [
        ("worker", 0, ENDED),
        ("worker", 1, AFTER_WORK), ("worker", 1, AFTER_WORK), ("worker", 1, AFTER_WORK), ("worker", 1, GAVE_UP),
        ("ps", 0, AFTER_WORK)]
    assert sum("Ray will not restart it" in e for e in sup.events) == 1
    assert len(sup.events) == 6


def test_a_worker_whose_failed_call_was_seen_rejoins_and_says_so():
    sup = bare_supervisor()
    sup._count_restart("worker", 0, 300, RESTARTING)
    sup._rejoined(0)
    assert sup.restarts == [record(0, REJOINED, step=300)]
    assert sup.events == ["Worker 0 rejoined the training near step 300."]
    sup._rejoined(0)  # nothing pending for it: nothing to announce
    assert len(sup.events) == 1


def test_more_deaths_than_max_restarts_end_the_run_but_deaths_only_ray_saw_do_not(monkeypatch):
    from raytf.errors import TrainingError

    sup = bare_supervisor()
    for _ in range(3):
        sup._count_restart("worker", 1, 50, RESTARTING)
    assert [r["recovery"] for r in sup.restarts] == [LOST_AGAIN, LOST_AGAIN, RESTARTING]
    with pytest.raises(TrainingError, match="Worker 1 died 4 times.*max_restarts is 3"):
        sup._count_restart("worker", 1, 60, RESTARTING)
    monkeypatch.setattr(supervisor, "actor_state", FakeRay(w0=(5, "ALIVE")))
    sup._reconcile([("worker", 0, "w0")])  # Ray restarted it more often than raytf would have: Ray's rule holds
    assert sup.worker_restarts == [5, 3]


def test_a_worker_restarted_after_its_work_is_set_up_again_by_a_rollback_and_counts_as_restored(monkeypatch):
    sup = bare_supervisor(workers=3)
    monkeypatch.setattr(supervisor, "actor_state", FakeRay(w0=(1, "ALIVE"), w2=(1, "ALIVE")))
    sup._reconcile([("worker", 0, "w0"), ("worker", 2, "w2")])
    assert sup.bare == {0, 2} and sup.restarts == [record(0, RESTARTING_AFTER_WORK, step=300),
                                                   record(2, RESTARTING_AFTER_WORK, step=300)]
    assert sup._take_bare(set_up_already=[2]) == [0]  # worker 2's run failed too: it is set up already
    assert sup.bare == set()
    sup.finish()
    assert sup.restarts == [record(0, RESTORED, step=300), record(2, AFTER_WORK, step=300)]


def test_non_trainable_values_come_from_the_first_worker_still_holding_its_replica(monkeypatch):
    from raytf import actors, training

    states = {"w0": (1, "RESTARTING"), "w1": (1, "ALIVE"), "w2": (0, "ALIVE")}
    answers = {"w1": None, "w2": ["moving mean"]}  # w1 was restarted after its work: never set up
    workers = [SimpleNamespace(name=n, non_trainable=n) for n in states]
    monkeypatch.setattr(actors, "actor_state", lambda handle: states[handle.name])
    monkeypatch.setattr(training, "_answer", lambda method, what: answers[method])
    events = []
    model = SimpleNamespace(non_trainable_variables=["moving mean"])
    assert training._non_trainable(workers, model, events.append) == ["moving mean"]
    assert events == []
    answers["w2"] = None  # none holds one: the model keeps its initial values, and the user is told
    assert training._non_trainable(workers, model, events.append) == []
    assert len(events) == 1 and "initial non-trainable values" in events[0]
