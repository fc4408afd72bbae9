"""The run's typed configuration.

Owns: the frozen config models (`schema`), YAML read with line numbers for errors
(`yaml_source`), and `module:function` resolution of the config's import paths (`imports`).
May import: nothing of raytf but `raytf.errors`.
"""

from raytf.config.schema import (
    CheckpointConfig,
    DataConfig,
    DistributionConfig,
    EvalConfig,
    DataSpec,
    LossConfig,
    OptimizerConfig,
    Resources,
    SparseConfig,
    TraceConfig,
    TrainConfig,
    config_from_dict,
    load_config,
)

__all__ = [
    "CheckpointConfig", "DataConfig", "DistributionConfig", "EvalConfig", "DataSpec", "LossConfig", "OptimizerConfig", "Resources", "SparseConfig",
    "TraceConfig", "TrainConfig", "config_from_dict", "load_config",
]
