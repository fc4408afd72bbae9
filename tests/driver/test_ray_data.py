"""data.train as a Ray Data dataset, on the shared local cluster: the splits give every row once per epoch
(real streaming_split, its consumers in threads as the workers are); digits trains from Ray Data with the
workers holding every CPU of the cluster (the dataset is read into the object store first: it trains, it
does not hang), validated after every epoch on a Ray Data data.eval."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("tensorflow")

import raytf  # noqa: E402
from raytf.config import config_from_dict  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("dataset, materialized, rows, shares", [
    ("ray_rows", False, 1000, [500, 500]),  # streamed: streaming_split(2, equal=True)
    ("ray_rows_odd", True, 1001, [500, 501]),  # in the object store: runs of its blocks' rows, every row
])
def test_ray_data_parts_give_every_row_once_per_epoch(ray_cluster, dataset, materialized, rows, shares):
    from raytf.cluster.connection import connect
    from raytf.data.epochs import passes_steps
    from raytf.data.ray_data import RayDataInput, passes

    cfg = config_from_dict({"model": "m:f", "loss": "mse", "batch_size": 64, "seed": 3,
                            "data": {"train": {"format": "ray_data", "dataset": f"tests.data.sample_data:{dataset}",
                                               "label": "label"}, "shuffle_buffer": 100},
                            "distribution": {"workers": 2, "worker_resources": {"num_cpus": 1 if materialized else 0.5}}})
    with connect(ray_cluster.gcs_address):
        ray_input = RayDataInput(cfg.data.train, "data.train")
        ray_input.open()
        said = ray_input.materialize_if_needed(cfg, cluster_cpus=2)  # the workers would hold both CPUs, or one
        assert (said is not None) == materialized == ray_input.materialized
        assert ray_input.rows == rows and ray_input.shard_rows(2) == shares
        steps = passes_steps(shares, cfg.batch_size)
        share = ray_input.share(2, None, cfg.batch_size)
        assert (share.pieces is not None) == materialized
        epochs = 2
        read: dict[int, list[list[int]]] = {}

        def consume(worker: int) -> None:  # a worker's reading: its part, pass after pass
            stream = passes(share, worker, cfg, steps)
            read[worker] = []
            for _ in range(epochs):
                seen = []
                for _ in range(steps):
                    features, labels, weights = next(stream)
                    assert features.shape == (64,) and len(labels) == len(weights) == 64
                    assert (labels[weights == 1] == features[weights == 1] % 2).all()
                    seen.extend(features[weights == 1].tolist())
                read[worker].append(seen)

        threads = [threading.Thread(target=consume, args=(w,)) for w in range(2)]  # streamed splits: at once
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert set(read) == {0, 1}
        for epoch in range(epochs):
            assert sorted(read[0][epoch] + read[1][epoch]) == list(range(rows))
            assert [len(read[w][epoch]) for w in range(2)] == shares
        assert read[0][0] != read[0][1]  # reshuffled between epochs


def test_digits_trains_from_ray_data_while_the_workers_hold_every_cpu(ray_cluster, tmp_path):
    events = []
    summary = raytf.fit("examples/digits_ray_data.yaml", overrides=[f"output_dir={tmp_path / 'run'}", "epochs=2"],
                        address=ray_cluster.gcs_address, on_event=events.append)
    # 2 workers x 1 CPU on the 2-CPU cluster: Ray Data's tasks could not run beside them
    assert any("read into the object store first" in e for e in events), events
    assert any("a Ray Data dataset of 1,437 rows in the object store, about 718 per worker" in e for e in events), events
    assert [h["epoch"] for h in summary["eval_history"]] == [1, 2]
    assert summary["steps"] == 2 * 23  # ceil(719 / 32) a pass
    assert summary["eval"]["accuracy"] > 0.5  # learnt (chance: 0.1)


def test_a_killed_worker_reading_a_streamed_split_is_restarted_and_the_run_ends(ray_cluster, tmp_path):
    """Worker 1 is SIGKILLed mid-epoch: its split's epoch under way is lost to it, the others go on; restarted,
    it reads its split from the next epoch on (a fresh iterator) and the run trains every step."""
    from tests.driver.test_faults import KillAt

    killer = KillAt("digits-ray-data", "worker", 1, step=30)
    events = []

    def on_event(message: str) -> None:
        events.append(message)
        killer.on_event(message)

    summary = raytf.fit("examples/digits_ray_data.yaml", address=ray_cluster.gcs_address, on_event=on_event,
                        progress=killer,
                        overrides=[f"output_dir={tmp_path / 'run'}", "epochs=6", "log_every_seconds=0.25",
                                   "distribution.worker_resources.num_cpus=0.5"])  # a CPU left: streamed
    assert any("streamed and split equally" in e for e in events), events
    assert killer.killed_at is not None
    assert [r["index"] for r in summary["restarts"] if r["role"] == "worker"] == [1], summary["restarts"]
    assert summary["steps"] == 6 * 23 and len(summary["eval_history"]) == 6
    assert summary["eval"]["accuracy"] > 0.5
