"""The training and evaluation data: what each worker reads, in which order, for how long.

Owns: functions that return a tf.data.Dataset, called and checked (`datasets`); Parquet, CSV and
TFRecord files split between the workers (`files`); Ray Data datasets split by Ray Data (`ray_data`);
passes over the data in which every worker reads its rows once (`epochs`); and `data.train`/`data.eval`
as the driver and the workers open them (`sources`).
May import: `raytf.config`, `raytf.errors`.
"""
