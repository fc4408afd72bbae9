"""Sparse tables without a cluster: where rows live, ids and rows as they travel, the row updates
against the dense ones and by-hand references, re-cut checkpoints, and which tables are eligible."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from raytf.config import OptimizerConfig, config_from_dict  # noqa: E402
from raytf.driver.checkpoints import build_manifest, latest, load, write_manifest  # noqa: E402
from raytf.errors import ConfigError, TrainingError  # noqa: E402
from raytf.exchange.optimizers import FlatOptimizer, RowOptimizer  # noqa: E402
from raytf.exchange.shard_state import ShardState, TableState, step_dir, write_shard
from raytf.exchange.sharding import VariableSpec, plan_shards  # noqa: E402
from raytf.exchange.tables import TableSpec, dedupe, split  # noqa: E402


@pytest.mark.parametrize("partition", ["mod", "div"])
@pytest.mark.parametrize("servers", [1, 2, 3, 7])
def test_every_row_has_exactly_one_owner_and_place(partition, servers):
    spec = TableSpec(variable=0, layer="items", rows=23, width=4, servers=servers, partition=partition)
    ids = np.arange(23)
    seen = np.zeros(23, int)
    for server in range(servers):
        mine = spec.global_ids(server)
        seen[mine] += 1
        assert (spec.owner(mine) == server).all()
        np.testing.assert_array_equal(spec.local(mine), np.arange(len(mine)))
    assert (seen == 1).all()
    assert sum(spec.rows_of(s) for s in range(servers)) == 23
    assert (spec.owner(ids) < servers).all()


def test_dedupe_sums_the_rows_of_equal_ids_and_split_sends_each_to_its_owner():
    ids = np.array([5, 2, 5, 9, 2, 2])
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    unique, summed = dedupe(ids, rows)
    np.testing.assert_array_equal(unique, [2, 5, 9])
    np.testing.assert_array_equal(summed, [[2 + 8 + 10, 3 + 9 + 11], [0 + 4, 1 + 5], [6, 7]])
    spec = TableSpec(variable=0, layer="t", rows=10, width=2, servers=2)
    (local0, rows0), (local1, rows1) = split(spec, unique, summed)
    np.testing.assert_array_equal(local0, [1])  # id 2 on server 0, its row 1
    np.testing.assert_array_equal(local1, [2, 4])  # ids 5 and 9 on server 1
    np.testing.assert_array_equal(rows1, summed[1:])


def test_an_out_of_range_id_names_the_worker_table_id_and_input_dim():
    spec = TableSpec(variable=0, layer="items", rows=100, width=2, servers=2)
    with pytest.raises(TrainingError, match=r"worker 3: data.train: .* id 100 .* table 'items', whose input_dim is 100"):
        spec.check_ids(np.array([4, 100]), worker=3)
    with pytest.raises(TrainingError, match=r"id -1"):
        spec.check_ids(np.array([-1, 4]), worker=0)
    spec.check_ids(np.array([0, 99]), worker=0)


def test_dense_variables_keep_their_placement_and_servers_may_outnumber_them():
    variables = [VariableSpec("items", (1000, 8)), VariableSpec("dense", (8, 4)), VariableSpec("bias", (4,))]
    table = TableSpec(variable=0, layer="items", rows=1000, width=8, servers=4)
    plan = plan_shards(variables, 4, [table])
    assert plan.tables == (table,)
    owned = sorted(i for shard in plan.shards for i in shard.variables)
    assert owned == [1, 2]  # the table is on no server whole
    with pytest.raises(ConfigError, match="only 3 trainable variables"):
        plan_shards(variables, 4)


# -- the updates -------------------------------------------------------------------------------


def lazy_reference(name: str, config: OptimizerConfig, params, slots, ids, grad, step):
    """The touched rows updated by the optimizer's formula; the other rows and their slots untouched."""
    p, g = params.copy(), grad
    c = config
    if name == "momentum":
        m = slots["momentum"]
        m[ids] = c.momentum * m[ids] - c.learning_rate * g
        p[ids] += m[ids] if not c.nesterov else c.momentum * m[ids] - c.learning_rate * g
    elif name == "rmsprop":
        ms, mom = slots["ms"], slots["mom"]
        ms[ids] = c.rho * ms[ids] + (1 - c.rho) * g * g
        mom[ids] = c.momentum * mom[ids] + c.learning_rate * g / np.sqrt(ms[ids] + c.epsilon)
        p[ids] -= mom[ids]
    elif name == "adam":
        m, v = slots["m"], slots["v"]
        m[ids] = c.beta_1 * m[ids] + (1 - c.beta_1) * g
        v[ids] = c.beta_2 * v[ids] + (1 - c.beta_2) * g * g
        lr = c.learning_rate * np.sqrt(1 - c.beta_2 ** step) / (1 - c.beta_1 ** step)
        p[ids] -= lr * m[ids] / (np.sqrt(v[ids]) + c.epsilon)
    return p


STEPS = [np.array([1, 4, 7]), np.array([2, 4]), np.array([7])]


@pytest.mark.parametrize("name", ["sgd", "adagrad", "momentum", "rmsprop", "adam"])
def test_row_updates_equal_the_dense_update_where_they_must(name):
    """SGD and Adagrad: the sparse update is the dense one (bit for bit on untouched rows); with
    slots: dense every optimizer is; lazily, momentum/RMSProp/Adam follow their formula on the
    touched rows only (checked against a by-hand numpy reference)."""
    rng = np.random.default_rng(0)
    config = OptimizerConfig(name=name, learning_rate=0.1)
    initial = rng.normal(size=(10, 3)).astype(np.float32)
    lazy = RowOptimizer(config, initial.copy())
    dense_slots = RowOptimizer(config, initial.copy(), dense_slots=True)
    flat = FlatOptimizer(config, initial.reshape(-1).copy())
    reference = initial.astype(np.float64)
    slots = {n: np.zeros((10, 3)) for n in ("momentum", "ms", "mom", "m", "v")}
    for step, ids in enumerate(STEPS, 1):
        grad = rng.normal(size=(len(ids), 3)).astype(np.float32)
        full = np.zeros((10, 3), np.float32)
        full[ids] = grad
        lazy.apply(ids, grad)
        dense_slots.apply(ids, grad)
        flat.apply_mean([tf.constant(full.reshape(-1))])
        reference = lazy_reference(name, config, reference, slots, ids, grad.astype(np.float64), step)
    dense = flat.params_view().reshape(10, 3)
    np.testing.assert_allclose(dense_slots.rows(), dense, rtol=1e-6, atol=1e-7)
    untouched = [0, 3, 5, 6, 8, 9]
    if name in ("sgd", "adagrad"):
        np.testing.assert_allclose(lazy.rows(), dense, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(lazy.rows()[untouched], initial[untouched])
    else:
        assert lazy.lazy and not np.allclose(lazy.rows(), dense)
        np.testing.assert_allclose(lazy.rows(), reference, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(lazy.rows()[untouched], initial[untouched])


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_a_rounds_fused_update_merges_equal_ids_of_all_workers_into_their_mean(name):
    """The server's one-call update of a round equals summing equal ids of all workers' pushes by
    hand, dividing by the number of gradients and applying the rows; a round of none counts a step."""
    rng = np.random.default_rng(1)
    config = OptimizerConfig(name=name, learning_rate=0.1)
    initial = rng.normal(size=(12, 4)).astype(np.float32)
    fused, by_hand = RowOptimizer(config, initial.copy()), RowOptimizer(config, initial.copy())
    parts = [(np.array([9, 2, 5]), rng.normal(size=(3, 4)).astype(np.float32)),
             (np.array([5, 11]), rng.normal(size=(2, 4)).astype(np.float32)),
             (np.array([], np.int64), np.zeros((0, 4), np.float32))]
    fused.apply_round(parts)
    ids, rows = dedupe(np.concatenate([i for i, _ in parts]), np.concatenate([r for _, r in parts]))
    by_hand.apply(ids, rows * np.float32(1 / len(parts)))  # as the dense mean scales
    # Within an ulp: the graph may fold the learning rate into the mean's scale.
    np.testing.assert_allclose(fused.rows(), by_hand.rows(), rtol=1e-6, atol=1e-8)
    assert not np.array_equal(fused.rows()[[2, 5, 9, 11]], initial[[2, 5, 9, 11]])
    np.testing.assert_array_equal(fused.rows()[[0, 1, 3]], initial[[0, 1, 3]])
    fused.apply_round([])
    assert fused.steps == 2
    # One gradient (async): applied as it is, no merge.
    fused.apply_round(parts[:1])
    by_hand.apply(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    by_hand.apply(*parts[0])
    np.testing.assert_allclose(fused.rows(), by_hand.rows(), rtol=1e-6, atol=1e-8)
    assert fused.steps == 3


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_a_round_of_two_tables_updates_both_and_gathers_each_request_after_the_update(name):
    """The server's one call per round: both tables updated as each table's own round would, and
    each request's rows read after that update (a fresh gather agrees); none counts a step."""
    from raytf.exchange.row_rounds import RowRounds

    rng = np.random.default_rng(2)
    config = OptimizerConfig(name=name, learning_rate=0.1)
    initial = [rng.normal(size=(9, 3)).astype(np.float32), rng.normal(size=(7, 2)).astype(np.float32)]
    tables = [RowOptimizer(config, t.copy()) for t in initial]
    alone = [RowOptimizer(config, t.copy()) for t in initial]
    grads = [((np.array([1, 4]), rng.normal(size=(2, 3)).astype(np.float32)), (np.array([6]), rng.normal(size=(1, 2)).astype(np.float32))),
             ((np.array([4, 8]), rng.normal(size=(2, 3)).astype(np.float32)), (np.array([], np.int64), np.zeros((0, 2), np.float32)))]
    wanted = [(np.array([4, 0]), np.array([6, 6, 1])), (np.array([8]), np.array([], np.int64))]
    rounds = RowRounds(tables)
    slot = [np.full((4, 3), np.nan, np.float32), np.full((4, 2), np.nan, np.float32)]  # request 0's rows go here
    rows = rounds.run(grads, wanted, [slot, None])
    for k, ids in enumerate(wanted[0]):
        np.testing.assert_array_equal(slot[k][:len(ids)], rows[0][k])
        assert np.isnan(slot[k][len(ids):]).all()
    for k, table in enumerate(alone):
        table.apply_round([grad[k] for grad in grads])
        np.testing.assert_array_equal(tables[k].rows(), table.rows())
    for want, got in zip(wanted, rows):
        for k, (ids, values) in enumerate(zip(want, got)):
            np.testing.assert_array_equal(values, alone[k].rows()[ids])
            np.testing.assert_array_equal(values, rounds.gather(want)[k])
    assert not np.array_equal(rows[0][0][0], initial[0][4])  # row 4 was pushed: read after the update
    rounds.run([], [], [])
    assert [t.steps for t in tables] == [2, 2]


def test_sgd_rows_applied_early_equal_the_whole_round_and_a_smaller_round_is_corrected():
    """A sync round's rows applied as each push arrives (SGD, 1/expected each) end as the whole
    round's update; when the round ends with fewer gradients than expected (one was not finite),
    the early share is corrected to the round's. Adagrad cannot apply early."""
    from raytf.exchange.row_rounds import RowRounds

    rng = np.random.default_rng(3)
    config = OptimizerConfig(name="sgd", learning_rate=0.5)
    initial = rng.normal(size=(10, 4)).astype(np.float32)
    parts = [(np.array([1, 7, 3]), rng.normal(size=(3, 4)).astype(np.float32)),
             (np.array([7, 2]), rng.normal(size=(2, 4)).astype(np.float32))]
    early, whole = RowOptimizer(config, initial.copy()), RowOptimizer(config, initial.copy())
    early.apply_early(parts[0], expected=2)
    assert not np.array_equal(early.rows()[[1, 3, 7]], initial[[1, 3, 7]])  # applied before the round ends
    early.apply_round(parts, early=[2, None])
    whole.apply_round(parts)
    np.testing.assert_allclose(early.rows(), whole.rows(), rtol=1e-6, atol=1e-7)
    assert early.steps == whole.steps == 1
    # Expected 3, the round ended with 2: the early part's share 1/3 becomes 1/2.
    early.apply_early(parts[0], expected=3)
    early.apply_round(parts, early=[3, None])
    whole.apply_round(parts)
    np.testing.assert_allclose(early.rows(), whole.rows(), rtol=1e-5, atol=1e-6)
    assert RowRounds([early]).applies_early
    assert not RowRounds([RowOptimizer(OptimizerConfig(name="adagrad", learning_rate=0.1), initial.copy())]).applies_early


def test_gather_returns_the_current_rows():
    table = RowOptimizer(OptimizerConfig(name="sgd", learning_rate=1.0), np.zeros((5, 2), np.float32))
    table.apply(np.array([3]), np.array([[1.0, 2.0]], np.float32))
    np.testing.assert_array_equal(table.gather(np.array([3, 0])), [[-1.0, -2.0], [0.0, 0.0]])


# -- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", ["mod", "div"])
@pytest.mark.parametrize("servers_after", [1, 3, 4])
def test_a_checkpoint_of_two_servers_restores_rows_and_slots_into_any_number(tmp_path, partition, servers_after):
    variables = [VariableSpec("items", (11, 3)), VariableSpec("w", (3, 2))]
    whole = np.arange(33, dtype=np.float32).reshape(11, 3)
    accum = -whole
    before = plan_shards(variables, 2, [TableSpec(0, "items", 11, 3, 2, partition)])
    directory = step_dir(tmp_path, 5)
    saved = []
    for server, shard in enumerate(before.shards):
        spec = before.tables[0]
        ids = spec.global_ids(server)
        dense = np.full(6, 7.0, np.float32) if shard.variables else np.zeros(0, np.float32)
        table = TableState(whole[ids], {"accumulator": accum[ids]}, iterations=5)
        saved.append(write_shard(directory, server, ShardState(dense, {"accumulator": dense + 1}, 5, 5, (table,))))
    write_manifest(directory, build_manifest(5, before, saved, mode="sync", updates_per_step=1, optimizer="adagrad",
                                             run_id="t"))
    after = plan_shards(variables, servers_after, [TableSpec(0, "items", 11, 3, servers_after, partition)])
    states = load(latest(tmp_path), after, "adagrad", 1)
    assert len(states) == servers_after
    restored = np.zeros_like(whole)
    restored_accum = np.zeros_like(whole)
    for server, state in enumerate(states):
        ids = after.tables[0].global_ids(server)
        (table,) = state.tables
        restored[ids] = table.params
        restored_accum[ids] = table.slots["accumulator"]
        assert table.iterations == 5 and state.version == 5
    np.testing.assert_array_equal(restored, whole)
    np.testing.assert_array_equal(restored_accum, accum)
    assert sum(len(s.params) for s in states) == 6  # the dense variable, once


def test_a_checkpoint_with_other_sparse_tables_is_refused(tmp_path):
    variables = [VariableSpec("items", (11, 3)), VariableSpec("w", (3, 2))]
    dense_plan = plan_shards(variables, 2)
    directory = step_dir(tmp_path, 1)
    saved = [write_shard(directory, i, ShardState(np.zeros(s.size, np.float32))) for i, s in enumerate(dense_plan.shards)]
    write_manifest(directory, build_manifest(1, dense_plan, saved, mode="sync", updates_per_step=1, optimizer="sgd",
                                             run_id="t"))
    sparse_plan = plan_shards(variables, 2, [TableSpec(0, "items", 11, 3, 2)])
    with pytest.raises(ConfigError, match=r"holds sparse tables none, but this run's are \[items 11x3\]"):
        load(latest(tmp_path), sparse_plan, "sgd", 1)


# -- which tables ------------------------------------------------------------------------------


def _tied_scores_class():
    import keras

    class TiedScores(keras.layers.Layer):
        """Scores against every row of an embedding table (weight tying): reads the whole table."""

        def __init__(self, table, **kwargs):
            super().__init__(**kwargs)
            self.table = table

        def call(self, x):
            return keras.ops.matmul(x, keras.ops.transpose(self.table.embeddings))

    return TiedScores


TiedScores = _tied_scores_class()


def _model(kind: str):
    import keras

    ids = keras.Input(shape=(4,), dtype="int32")
    if kind == "regularized":
        table = keras.layers.Embedding(50, 8, embeddings_regularizer="l2", name="items")
    elif kind == "float16":
        table = keras.layers.Embedding(50, 8, dtype="float16", name="items")
    else:
        table = keras.layers.Embedding(50, 8, name="items")
    embedded = table(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    if kind == "tied":  # the table also scores every item: a dense use
        logits = TiedScores(table)(pooled)
        return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(logits))
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(keras.ops.cast(pooled, "float32")))


def _config(tables, min_bytes=0):
    return config_from_dict({"model": "a:b", "data": {"train": "a:c"}, "loss": "binary_crossentropy",
                             "sparse": {"tables": tables, "min_bytes": min_bytes},
                             "distribution": {"parameter_servers": 2}})


def _find(kind, tables, min_bytes=0):
    from raytf.replica.sparse import find_tables

    features = tf.constant(np.arange(16).reshape(4, 4) % 50, tf.int32)
    labels = tf.constant([[0.0], [1.0], [0.0], [1.0]])
    return find_tables(_model(kind), _config(tables, min_bytes), features, labels)


def test_auto_picks_an_eligible_table_and_none_picks_nothing():
    (table,), notices = _find("plain", "auto")
    assert (table.layer, table.rows, table.width, table.servers) == ("items", 50, 8, 2) and notices == []
    assert _find("plain", "none") == ([], [])
    assert _find("plain", "auto", min_bytes=10**9) == ([], [])  # too small to be worth it


@pytest.mark.parametrize("kind, rule", [("regularized", "embeddings_regularizer"), ("tied", "used densely"),
                                        ("float16", "float16")])
def test_an_ineligible_table_is_an_error_when_named_and_a_notice_under_auto(kind, rule):
    with pytest.raises(ConfigError, match=rf"'items' cannot be a sparse table: .*{rule}"):
        _find(kind, ["items"])
    tables, notices = _find(kind, "auto")
    assert tables == [] and len(notices) == 1 and "'items' stays dense" in notices[0] and rule in notices[0]


def test_a_named_table_that_is_not_there_names_the_ones_that_are():
    with pytest.raises(ConfigError, match=r"sparse.tables names 'itmes'.*its embedding layers: 'items'"):
        _find("plain", ["itmes"])


def test_a_sharded_embedding_is_an_embedding_outside_raytf_and_a_row_cache_inside():
    import keras

    from raytf.layers import ShardedEmbedding, rows_on_servers
    from raytf.replica.model import variable_specs

    def build():
        ids = keras.Input(shape=(5,), dtype="int32")
        return keras.Model(ids, ShardedEmbedding(1000, 8, name="items")(ids))

    plain = build()
    assert tuple(plain.get_layer("items").embeddings.shape) == (1000, 8)
    with rows_on_servers(batch_size=4, batches=2):
        cached = build()
    layer = cached.get_layer("items")
    assert tuple(layer.embeddings.shape) == (4 * 2 * 5, 8)  # never the whole table
    assert [v.shape for v in variable_specs(cached)] == [(1000, 8)]  # what the servers hold
    # The worker fills the cache with rows of the ids it needs, sorted; lookups find them there.
    ids = np.array([3, 17, 999])
    cache_ids = np.full(40, 2**62, np.int64)
    cache_ids[:3] = ids
    rows = np.zeros((40, 8), np.float32)
    rows[:3] = np.arange(3)[:, None] + 1
    layer.cached_ids.assign(cache_ids)
    layer.embeddings.assign(rows)
    out = cached(np.array([[999, 3, 17, 3, 999]], np.int32)).numpy()
    np.testing.assert_array_equal(out[0, :, 0], [3, 1, 2, 1, 3])


def test_servers_create_a_sharded_tables_rows_the_same_for_any_number_of_servers():
    from raytf.exchange.tables import initial_rows

    init = {"name": "uniform", "low": -0.05, "high": 0.05, "seed": 7}
    whole = {}
    for servers, partition in ((1, "mod"), (3, "mod"), (2, "div")):
        spec = TableSpec(variable=0, layer="items", rows=1000, width=4, servers=servers, partition=partition, init=init)
        table = np.empty((1000, 4), np.float32)
        for server in range(servers):
            table[spec.global_ids(server)] = initial_rows(spec, server, block=128)
        whole[(servers, partition)] = table
    first, *others = whole.values()
    for other in others:
        np.testing.assert_array_equal(other, first)
    assert -0.05 <= first.min() < first.max() <= 0.05 and len(np.unique(first)) > 3000
