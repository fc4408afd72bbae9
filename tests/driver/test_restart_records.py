"""The summary's `restarts` records, from the deaths raytf saw and the restart counts Ray keeps
(raytf.driver.restarts, and the supervisor that feeds it): the counting and the outcomes, without Ray
(Ray's answers are given, through groups of actors passed in)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from raytf.driver.restarts import (
    AFTER_WORK,
    ENDED,
    GAVE_UP,
    LOST_AGAIN,
    REJOINED,
    RESTARTING,
    RESTARTING_AFTER_WORK,
    RESTORED,
    RestartLog,
    deaths_known_to_ray,
    settle,
    unrecorded,
)


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


def restart_log(workers: int = 2, servers: int = 1) -> tuple[RestartLog, list[str]]:
    events: list[str] = []
    return RestartLog(workers, servers, max_restarts=3, on_event=events.append), events


def test_a_death_after_the_work_is_recorded_once_announced_once_and_settled():
    log, events = restart_log()
    log.lost("worker", 1, 80, RESTARTING)  # the failed run call of a mid-run kill
    log.rejoined(1, 80)
    log.seen_by_ray("worker", 1, 2, "RESTARTING", step=300)  # in the loop: worker 1's run had ended
    log.seen_by_ray("worker", 1, 2, "RESTARTING", step=300)  # asked again: nothing new
    log.settle_all({("worker", 0): "ALIVE", ("worker", 1): "ALIVE", ("ps", 0): "ALIVE"})
    assert log.records == [record(1, REJOINED, step=80), record(1, AFTER_WORK, step=300)]
    assert [e for e in events if "was lost" in e] == ["Worker 1 was lost near step 300, after its work was done; "
                                                      "Ray restarts it."]
    assert log.bare == {1} and log.counts["worker"] == [0, 2]


def test_a_worker_whose_failed_call_was_seen_rejoins_and_says_so():
    log, events = restart_log()
    log.lost("worker", 0, 300, RESTARTING)
    log.rejoined(0, 300)
    assert log.records == [record(0, REJOINED, step=300)]
    assert events == ["Worker 0 rejoined the training near step 300."]
    log.rejoined(0, 300)  # nothing pending for it: nothing to announce
    assert len(events) == 1


def test_more_deaths_than_max_restarts_end_the_run_but_deaths_only_ray_saw_do_not():
    from raytf.errors import TrainingError

    log, _ = restart_log()
    for _ in range(3):
        log.lost("worker", 1, 50, RESTARTING)
    assert [r["recovery"] for r in log.records] == [LOST_AGAIN, LOST_AGAIN, RESTARTING]
    with pytest.raises(TrainingError, match="Worker 1 died 4 times.*max_restarts is 3"):
        log.lost("worker", 1, 60, RESTARTING)
    log.seen_by_ray("worker", 0, 5, "ALIVE", step=70)  # Ray restarted it more often than raytf would have: Ray's rule holds
    assert log.counts["worker"] == [5, 3]


def test_a_worker_restarted_after_its_work_is_set_up_again_by_a_rollback_and_counts_as_restored():
    log, _ = restart_log(workers=3)
    log.seen_by_ray("worker", 0, 1, "ALIVE", step=300)
    log.seen_by_ray("worker", 2, 1, "ALIVE", step=300)
    assert log.bare == {0, 2} and log.records == [record(0, RESTARTING_AFTER_WORK, step=300),
                                                  record(2, RESTARTING_AFTER_WORK, step=300)]
    assert log.take_bare(set_up_already=[2]) == [0]  # worker 2's run failed too: it is set up already
    assert log.bare == set()
    log.settle_all({("worker", 2): "ALIVE"})
    assert log.records == [record(0, RESTORED, step=300), record(2, AFTER_WORK, step=300)]


# -- the supervisor asks Ray through the groups it is given ------------------------------------
class FakeGroup:
    """A group of actors whose Ray states are given: (restarts, state) per actor, None if unknown."""

    def __init__(self, states: list[tuple[int, str] | None]) -> None:
        self.states = states
        self.handles = [object() for _ in states]
        self.calls: dict = {}

    def __len__(self) -> int:
        return len(self.states)

    def ray_states(self) -> list[tuple[int, str] | None]:
        return self.states


def supervisor_with(workers: list, servers: list):
    import numpy as np

    from raytf.config import config_from_dict
    from raytf.driver.actors import RunActors
    from raytf.driver.supervisor import Supervisor
    from raytf.exchange.server import ServerSettings
    from raytf.exchange.shard_state import ShardState

    config = config_from_dict({"name": "records", "model": "m:f", "data": {"train": "m:g"}, "loss": "mse",
                               "steps": 300, "distribution": {"workers": len(workers), "parameter_servers": len(servers)}})
    settings = ServerSettings(run_name="records", distribution=config.distribution, threads=1, target_version=300)
    actors = RunActors(run_id="records-1", servers=FakeGroup(servers), workers=FakeGroup(workers))
    events: list[str] = []
    sup = Supervisor(config, "records-1", None, actors, settings, [ShardState(params=np.zeros(1), version=300)], [],
                     events.append)
    return sup, events


def test_deaths_only_ray_saw_are_found_at_the_end_for_every_actor():
    sup, events = supervisor_with(workers=[(1, "RESTARTING"), (3, "DEAD")], servers=[(1, "ALIVE")])
    sup.finish()
    assert [(r["role"], r["index"], r["recovery"]) for r in sup.restarts] == [
        ("worker", 0, ENDED),
        ("worker", 1, AFTER_WORK), ("worker", 1, AFTER_WORK), ("worker", 1, AFTER_WORK), ("worker", 1, GAVE_UP),
        ("ps", 0, AFTER_WORK)]
    assert sum("Ray will not restart it" in e for e in events) == 1
    assert len(events) == 6
    assert {r["step"] for r in sup.restarts} == {300}  # the step the run had reached


def test_an_actor_ray_does_not_know_is_left_alone():
    sup, events = supervisor_with(workers=[None, (0, "ALIVE")], servers=[None])
    sup.finish()
    assert sup.restarts == [] and events == []


class FakeWorker:
    """A worker handle whose `non_trainable` answer is given (None: restarted after its work, never set up)."""

    def __init__(self, name: str, answer) -> None:
        self.name, self.answer = name, answer
        self.non_trainable = self


def test_non_trainable_values_are_the_mean_over_the_workers_still_holding_their_replica(monkeypatch):
    from raytf.driver import fit, groups

    states = {"w0": (1, "RESTARTING"), "w1": (1, "ALIVE"), "w2": (0, "ALIVE"), "w3": (0, "ALIVE")}
    seed = np.array([7, 1], np.uint32)
    workers = groups.WorkerGroup([FakeWorker("w0", [np.array([100.0], np.float32), seed]), FakeWorker("w1", None),
                                  FakeWorker("w2", [np.array([1.0, 3.0], np.float32), seed]),
                                  FakeWorker("w3", [np.array([3.0, 6.0], np.float32), np.array([9, 9], np.uint32)])],
                                 threads=1)
    monkeypatch.setattr(groups, "actor_state", lambda handle: states[handle.name])  # Ray's GCS, for these handles
    monkeypatch.setattr(groups, "answer", lambda method, what: method.answer)  # the actor's reply
    events: list[str] = []
    model = SimpleNamespace(non_trainable_variables=["moving mean", "seed"])
    mean, state = fit._non_trainable(workers, model, events.append)  # w0 is restarting: not asked
    assert mean.dtype == np.float32 and mean.tolist() == [2.0, 4.5]  # BatchNorm's statistics: averaged
    assert state is seed  # not a float: the first worker's
    assert events == []
    for handle in workers.handles[2:]:  # none holds one: the model keeps its initial values, and the user is told
        handle.answer = None
    assert fit._non_trainable(workers, model, events.append) == []
    assert len(events) == 1 and "initial non-trainable values" in events[0]


def test_a_worker_whose_last_run_trained_no_step_does_not_make_the_final_loss_nan():
    """A worker that rejoined after the others had trained every step returns 0 steps and no loss."""
    from raytf.driver.summary import final_loss
    from raytf.exchange import Status, WorkerResult

    def result(index, steps, loss):
        return WorkerResult(index, Status.DONE, steps, loss, 0, 0.0, 0.0, 0.0)

    assert final_loss([result(0, 300, 0.25), result(1, 0, float("nan"))]) == 0.25
    assert final_loss([result(0, 300, 0.25), result(1, 40, 0.75)]) == 0.5
    assert math.isnan(final_loss([result(0, 0, float("nan"))]))
