"""The warm pool: actor processes `raytf up` starts ahead of any run, with TensorFlow, Keras and raytf
imported, that a run takes as its servers and workers and gives back clean.

`host` is the pool's actor (one process, one run's role at a time), `handles` the run's view of a host
(spoken to like the actor it hosts), `lease` what the driver does (find hosts that fit a run, reserve
their CPUs, take them, give them back), `start` what `raytf up` does (start and top up the pool).

May import: `raytf.replica`, `raytf.exchange`, `raytf.config`, `raytf.observe`, `raytf.runtime`, `raytf.errors`.
"""
