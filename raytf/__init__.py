"""raytf: TensorFlow data-parallel training with parameter servers on Ray."""

from raytf.errors import ClusterError, ConfigError, RaytfError, TrainingError

__version__ = "0.1.0"

__all__ = ["ClusterError", "ConfigError", "RaytfError", "TrainingError", "__version__", "connect", "fit", "load_config"]


def __getattr__(name):
    # Lazy: importing raytf must stay cheap (the CLI's --help must not import TensorFlow or Ray).
    if name == "fit":
        from raytf.driver.fit import fit

        return fit
    if name == "connect":
        from raytf.cluster.attach import connect

        return connect
    if name == "load_config":
        from raytf.config import load_config

        return load_config
    raise AttributeError(name)
