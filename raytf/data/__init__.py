"""The training and evaluation data: what each worker reads, in which order, for how long.

Owns: functions that return a tf.data.Dataset, called and checked (`datasets`), file specs read from Parquet, CSV and TFRecord files and split between the workers (`files`),
passes over the data in which every worker reads its rows once (`epochs`), and `data.train`/`data.eval`
as the driver and the workers open them (`sources`).
May import: `raytf.config`, `raytf.errors`.
"""
