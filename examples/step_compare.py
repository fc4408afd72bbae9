"""raytf's worker step against the ceiling's step, in one process, one TF thread, interleaved.

    python examples/step_compare.py [--rounds 6] [--steps 40]

The ceiling (examples/bench_baselines.py) trains with a local update fused into its XLA step;
raytf's worker step reads the parameters through DLPack views of a 64-byte aligned flat buffer
(`keras.StatelessScope`, as `raytf.replica.worker` does), returns per-variable gradients and a finite
check, and the gradients are then copied into a flat buffer (what the push does into a slot). Same
model (examples/synthetic.py's MLP), same batch of 256. Prints min and median ms per step of each;
judges nothing. The README's benchmark section uses it to show that a raytf worker's `compute` is
the ceiling's step, so the gap a run shows is the exchange and the machine, not the step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--steps", type=int, default=40, help="steps per round and contender (default 40)")
    args = parser.parse_args(argv)

    from raytf.runtime import aligned_zeros, as_tensor, configure_tensorflow

    configure_tensorflow(1)
    import keras
    import numpy as np
    import tensorflow as tf

    from examples.synthetic import build_model
    from raytf.exchange.sharding import plan_shards
    from raytf.replica.model import variable_specs

    x = tf.random.normal((256, 784))
    y = tf.random.uniform((256,), 0, 10, tf.int32)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    ceiling_model = build_model()
    ceiling_model(x)
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(ceiling_model.trainable_variables)

    @tf.function(jit_compile=True)
    def ceiling_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, ceiling_model(x, training=True))
        grads = tape.gradient(loss, ceiling_model.trainable_variables)
        optimizer.apply_gradients(zip(grads, ceiling_model.trainable_variables))
        return loss

    model = build_model()
    model(x)
    shard = plan_shards(variable_specs(model), 1).shards[0]  # one server's aligned layout, as raytf lays it
    dense = [model.trainable_variables[i] for i in shard.variables]
    shapes = [tuple(v.shape) for v in dense]
    params, grads_out = shard.pack([v.numpy() for v in dense]), aligned_zeros(shard.size)

    @tf.function(jit_compile=True)
    def raytf_step(x, y, *values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            with keras.StatelessScope(state_mapping=list(zip(dense, values))):
                loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, list(values))
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
        return loss, grads, finite

    def run_ceiling() -> None:
        float(ceiling_step(x, y))

    def run_raytf() -> None:
        values = [as_tensor(part.reshape(shape)) for part, shape in zip(shard.parts(params), shapes)]
        loss, grads, finite = raytf_step(x, y, *values)
        bool(finite)
        for grad, part in zip(grads, shard.parts(grads_out)):
            np.copyto(part, np.from_dlpack(grad).reshape(-1))
        float(loss)

    contenders = {"ceiling step (update fused)": run_ceiling, "raytf worker step + copy out": run_raytf}
    for run in contenders.values():
        for _ in range(10):
            run()  # compile, warm up
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                run()
            times[name].append(1000 * (time.perf_counter() - started) / args.steps)
    for name, values in times.items():
        print(f"{name:<30} ms per step: min {min(values):6.1f}  median {statistics.median(values):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
