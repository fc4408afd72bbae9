"""The worker side of a model: building the user's Keras model and checking it (`model`), the
row-cached `ShardedEmbedding` (`layers`), which tables become sparse (`sparse`), a worker's rows
of those tables (`tables`), and the worker actor with its compiled step (`worker`).

May import: `raytf.data`, `raytf.exchange`, `raytf.config`, `raytf.observe`, `raytf.runtime`, `raytf.errors`.
"""
