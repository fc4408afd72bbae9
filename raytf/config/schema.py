"""The training config: typed, frozen, validated before anything starts.

`load_config(path, overrides)` reads YAML, applies `--set key.path=value` overrides and validates
everything with pydantic. Every problem becomes one `ConfigError` naming file, line, key, the
allowed values and, for a typo, the closest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from raytf.config.yaml_source import YamlSource, parse_yaml, read_yaml_file
from raytf.errors import ConfigError

# Keras 3 loss names accepted by `keras.losses.get` (kept here so validation needs no TensorFlow).
LOSSES = (
    "binary_crossentropy",
    "binary_focal_crossentropy",
    "categorical_crossentropy",
    "categorical_focal_crossentropy",
    "categorical_hinge",
    "cosine_similarity",
    "hinge",
    "huber",
    "kl_divergence",
    "log_cosh",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_error",
    "mean_squared_logarithmic_error",
    "poisson",
    "sparse_categorical_crossentropy",
    "squared_hinge",
)
# Keras's short aliases, accepted and expanded.
LOSS_ALIASES = {
    "mse": "mean_squared_error",
    "mae": "mean_absolute_error",
    "mape": "mean_absolute_percentage_error",
    "msle": "mean_squared_logarithmic_error",
    "kld": "kl_divergence",
    "logcosh": "log_cosh",
}
DEFAULT_STEPS = 1000
OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad", "rmsprop")


def _rule(problem: str, fix: str, key: str | None = None) -> PydanticCustomError:
    """A broken rule between keys: the error names the key, the problem and the fix (see `_describe`).
    `key`: the key to name when the rule is checked on a whole mapping (whose error names only the mapping)."""
    return PydanticCustomError("raytf_rule", problem, {"fix": fix, "key": key})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LossConfig(_Frozen):
    name: Literal[LOSSES]  # type: ignore[valid-type]
    from_logits: bool = False


class OptimizerConfig(_Frozen):
    name: Literal[OPTIMIZERS]  # type: ignore[valid-type]
    learning_rate: float = Field(0.001, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # momentum and rmsprop
    nesterov: bool = False  # momentum
    beta_1: float = Field(0.9, ge=0, lt=1)  # adam
    beta_2: float = Field(0.999, ge=0, lt=1)  # adam
    epsilon: float = Field(1e-7, gt=0)  # adam, adagrad, rmsprop
    rho: float = Field(0.9, gt=0, lt=1)  # rmsprop
    initial_accumulator_value: float = Field(0.1, ge=0)  # adagrad


FILE_FORMATS = ("parquet", "tfrecord", "csv")


class DataSpec(_Frozen):
    """Training or evaluation data that raytf reads itself: files (raytf.data.files; each worker reads its own
    rows) or, for data.train, a Ray Data dataset (raytf.data.ray_data; split between the workers by Ray Data)."""

    format: Literal[(*FILE_FORMATS, "ray_data")]  # type: ignore[valid-type]
    paths: tuple[str, ...] | None = Field(None, min_length=1, description="files: glob patterns (relative to the "
                                          "working directory), e.g. data/train-*.parquet")
    dataset: str | None = Field(None, description="ray_data: import path module:function () -> ray.data.Dataset")
    label: str = Field(min_length=1, description="the column (tfrecord: the feature) the model predicts")
    features: tuple[str, ...] | None = Field(None, min_length=1, description="the model's inputs: one column gives "
                                             "the features as an array, several as a dict by name; default: every column but the label")
    make: str | None = Field(None, description="files: import path module:function called once by the driver before the "
                             "files are listed (e.g. one that writes them on first use)")

    @model_validator(mode="after")
    def _source_of_its_format(self) -> "DataSpec":
        if self.format == "ray_data":
            if self.dataset is None:
                raise _rule("format ray_data reads the dataset a function returns, and dataset names none.",
                            "Add dataset: module:function (returning a ray.data.Dataset).", key="dataset")
            if self.paths is not None or self.make is not None:
                raise _rule("paths and make are for files; format ray_data reads the dataset its function returns.",
                            "Read the files in that function (e.g. ray.data.read_parquet), and remove paths/make.",
                            key="paths" if self.paths is not None else "make")
        else:
            if self.paths is None:
                raise _rule(f"format {self.format} reads files, and paths names none.",
                            "Add paths: a glob such as data/train-*." + self.format, key="paths")
            if self.dataset is not None:
                raise _rule(f"dataset is for format ray_data; format {self.format} reads the files of paths.",
                            "Remove dataset, or set format: ray_data.", key="dataset")
        return self

    @field_validator("paths", "features", mode="before")
    @classmethod
    def _one(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("features")
    @classmethod
    def _label_not_a_feature(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        label = info.data.get("label")
        if value is not None and label in value:
            raise _rule(f"the label '{label}' is also among the features; the model would see the answer.",
                        f"Remove '{label}' from features.")
        return value


class DataConfig(_Frozen):
    train: str | DataSpec = Field(union_mode="left_to_right", description="import path module:function "
                                  "(shard_index, num_shards) -> tf.data.Dataset, or a file spec {format, paths, label, features}")
    eval: str | DataSpec | None = Field(None, union_mode="left_to_right")
    shuffle_buffer: int = Field(0, ge=0, description="0 keeps the shard's order; files: also the order of each worker's files, reshuffled every epoch")


class Resources(_Frozen):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources")


class CompressionConfig(_Frozen):
    """What the cross-node wire sends, per direction (pairs on one node share memory: nothing to compress)."""
    push: Literal["none", "bf16", "int8"] = Field("none", description="gradients: int8 keeps the rounding error on the worker and adds it to the next gradient")
    pull: Literal["none", "bf16", "int8"] = Field("none", description="parameters sent back: int8 sends their change from what the worker holds and keeps the rounding error on the server")


class DistributionConfig(_Frozen):
    parameter_servers: int = Field(1, ge=1)
    workers: int = Field(2, ge=1)
    # The consistency policy (raytf.exchange.policies): sync (barrier), async, ssp (bounded staleness).
    mode: Literal["sync", "async", "ssp"] = "sync"
    transport: Literal["auto", "shm", "wire", "object_store"] = Field("auto", description="auto: shared memory between a worker and a server on one node, the wire (a direct TCP connection per pair) across nodes; object_store: Ray's, for every pair")
    compression: CompressionConfig = CompressionConfig()
    encrypt: bool = Field(False, description="the wire seals every payload with AES-256-GCM (it is always authenticated)")
    pipeline: bool = Field(True, description="sync servers whose workers are all on the wire apply and answer the gradient in 1 MB pieces while later pieces still arrive")
    doorbell: bool = Field(True, description="shared-memory links push over a Unix socket per server instead of a Ray call per step (models without sparse tables)")
    local_reduce: bool = Field(True, description="sync without backup workers, no sparse tables: workers sharing a node whose servers are all on other nodes sum their gradients in shared memory, and one of them pushes the sum over the wire and shares the answer (raytf.exchange.local_reduce)")
    worker_resources: Resources = Resources(num_cpus=1)
    pin_workers: Literal["auto", "off"] = Field("off", description="auto: each worker's process runs on cores of its own where the node's workers fit in the cores Ray counts (raytf.replica.placement); off: the kernel places them")
    # Parameter servers are idle most of the step; they reserve no CPU by default so that
    # `workers` equal to the core count still schedules.
    ps_resources: Resources = Resources(num_cpus=0)
    worker_threads: int | None = Field(None, ge=1, description="TF intra-op threads; default: worker num_cpus")
    ps_threads: int | None = Field(None, ge=1, description="TF intra-op threads; default: 2 in sync mode (workers idle while it applies), else max(1, ps num_cpus)")
    max_restarts: int = Field(3, ge=0, description="times each worker and server is restarted after its process dies")
    backup_workers: int = Field(0, ge=0, description="sync: a round is applied once workers - backup_workers gradients are in")
    staleness_bound: int | None = Field(None, ge=0, description="ssp: how many steps a worker may lead the slowest (default 3)")

    @field_validator("ps_resources", mode="before")
    @classmethod
    def _ps_default_cpus(cls, value: object) -> object:
        # A partial mapping (e.g. only custom `resources`, as KubeRay placement adds) keeps the
        # servers' own default of no CPU, not Resources' default of one.
        if isinstance(value, dict) and "num_cpus" not in value:
            return {"num_cpus": 0, **value}
        return value

    @field_validator("backup_workers")
    @classmethod
    def _backups_fit(cls, value: int, info: ValidationInfo) -> int:
        workers, mode = info.data.get("workers"), info.data.get("mode")
        if value and mode not in (None, "sync"):
            raise _rule(f"backup_workers is {value}, but mode is '{mode}': backup workers shorten sync rounds, and "
                        f"'{mode}' has no rounds.", "Set mode: sync, or remove backup_workers.")
        if workers is not None and value >= workers:
            raise _rule(f"backup_workers must be less than workers ({workers}), but it is {value}: a round needs at "
                        "least one gradient.", f"Set backup_workers to at most {workers - 1}, or add workers.")
        return value

    @field_validator("staleness_bound")
    @classmethod
    def _bound_needs_ssp(cls, value: int | None, info: ValidationInfo) -> int | None:
        mode = info.data.get("mode")
        if value is not None and mode not in (None, "ssp"):
            raise _rule(f"staleness_bound is {value}, but mode is '{mode}': the bound applies to mode ssp only.",
                        "Set mode: ssp to bound the staleness, or remove staleness_bound.")
        return value


class SparseConfig(_Frozen):
    """Embedding tables whose rows are sharded over the parameter servers and exchanged row by row."""

    # auto: every keras.layers.Embedding of at least min_bytes whose gradient is sparse (and every
    # raytf.replica.layers.ShardedEmbedding); none: all dense; or the names of the layers.
    tables: Literal["auto", "none"] | tuple[str, ...] = "auto"
    min_bytes: int = Field(16 * 2**20, ge=0, description="auto: the smallest table (bytes) worth exchanging by rows")
    partition: Literal["mod", "div"] = "mod"  # mod: row r on server r % P; div: contiguous ranges of rows
    slots: Literal["lazy", "dense"] = "lazy"  # momentum/rmsprop/adam: update touched rows only, or all rows

    @field_validator("tables", mode="before")
    @classmethod
    def _one_name(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) and value not in ("auto", "none") else value


class CheckpointConfig(_Frozen):
    every_steps: int = Field(100, ge=0, description="0: only the final checkpoint (and one on interrupt)")
    keep: int = Field(2, ge=1, description="complete checkpoints kept; older ones are deleted")
    keep_best: str | None = Field(None, min_length=1, description="an eval metric (e.g. accuracy, loss): the checkpoint "
                                  "where it was best is kept besides the newest ones (lower is better for losses and errors)")
    deltas: bool = Field(False, description="each checkpoint also writes, per server, the rows of dynamic tables touched and the keys evicted since the previous one (raytf.exchange.deltas)")


class EvalConfig(_Frozen):
    """Validation while training: data.eval evaluated on the parameters of a checkpoint written for it."""

    every_steps: int | None = Field(None, ge=1)
    every_epochs: int | None = Field(None, ge=1, description="with epochs: every this many epochs")

    @field_validator("every_epochs")
    @classmethod
    def _one_schedule(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("every_steps") is not None:
            raise _rule("both every_steps and every_epochs are given.", "Keep one of them.")
        return value


class TraceConfig(_Frozen):
    """A per-step timeline of every actor in output_dir/trace.json (raytf.observe.trace); off: no cost but a check."""

    enabled: bool = False
    max_steps: int = Field(1000, ge=1, description="steps kept per actor (the newest), so memory and the file stay bounded")


class TrainConfig(_Frozen):
    name: str = Field("raytf-run", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str
    data: DataConfig
    loss: LossConfig
    metrics: tuple[str, ...] = ()
    optimizer: OptimizerConfig = OptimizerConfig(name="adam")
    batch_size: int = Field(32, ge=1)
    steps: int = Field(None, ge=1, validate_default=False,  # type: ignore[assignment] - None until resolved below
                       description=f"steps per worker (default {DEFAULT_STEPS}); or give epochs")
    epochs: int | None = Field(None, ge=1, description="passes over the training data instead of steps")
    steps_per_epoch: int | None = Field(None, ge=1, description="with epochs: steps that make an epoch (default: "
                                        "derived from the data, each worker reading its rows once)")
    distribution: DistributionConfig = DistributionConfig()
    output_dir: str = ""
    seed: int = 0
    # XLA-compile the workers' gradient step (about 1.7x faster on CPU for an MLP). Keras's
    # "auto" leaves XLA off on CPU-only machines; raytf turns it on and falls back without XLA
    # when the model has an op XLA cannot compile.
    jit_compile: bool = True
    log_every_seconds: float = Field(1.0, gt=0)
    eval_batch_size: int = Field(256, ge=1)
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    sparse: SparseConfig = SparseConfig()
    # A NaN/Inf gradient is dropped from its update (counted, with a warning), or ends the run.
    on_nonfinite: Literal["skip", "abort"] = "skip"
    trace: TraceConfig = TraceConfig()

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        value = {"name": value} if isinstance(value, str) else value
        if isinstance(value, dict) and value.get("name") in LOSS_ALIASES:
            value = {**value, "name": LOSS_ALIASES[value["name"]]}
        return value

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TrainConfig":
        # With epochs, steps stays None until the data's size is known (raytf.data.epochs.resolve_epochs
        # sets both: steps = epochs x steps_per_epoch, which is no contradiction).
        if self.epochs is None:
            if self.steps_per_epoch is not None:
                raise _rule(f"steps_per_epoch is {self.steps_per_epoch}, but epochs is not set: it says how long an "
                            "epoch is.", "Set epochs too, or give steps instead of steps_per_epoch.", key="steps_per_epoch")
            if self.steps is None:
                object.__setattr__(self, "steps", DEFAULT_STEPS)
        elif self.steps is not None and (self.steps_per_epoch is None or self.steps != self.epochs * self.steps_per_epoch):
            raise _rule(f"both steps ({self.steps}) and epochs ({self.epochs}) are given; a run is as long as one of them.",
                        "Remove one: steps counts each worker's steps, epochs passes over the data.", key="epochs")
        return self

    @model_validator(mode="after")
    def _evaluation_needs_data(self) -> "TrainConfig":
        scheduled = self.eval.every_steps is not None or self.eval.every_epochs is not None
        if scheduled and self.data.eval is None:
            raise _rule("eval is scheduled, but there is no data.eval to evaluate.", "Set data.eval, or remove eval.",
                        key="eval")
        if self.eval.every_epochs is not None and self.epochs is None:
            raise _rule(f"every_epochs is {self.eval.every_epochs}, but the run is given in steps, not epochs.",
                        "Set epochs instead of steps, or use eval.every_steps.", key="eval.every_epochs")
        best = self.checkpoint.keep_best
        if best is not None and not scheduled:
            raise _rule(f"keep_best is '{best}', but nothing is evaluated while training.",
                        "Schedule it with eval.every_steps or eval.every_epochs, or remove keep_best.",
                        key="checkpoint.keep_best")
        known = ("loss", *self.metrics)
        if best is not None and best not in known:
            guess = difflib.get_close_matches(best, known, n=1)
            raise _rule(f"keep_best is '{best}', which the evaluation does not report (it reports {', '.join(known)}).",
                        (f"Did you mean '{guess[0]}'? " if guess else "") + "Name the loss or one of metrics.",
                        key="checkpoint.keep_best")
        return self

    def eval_every_steps(self) -> int | None:
        """Steps between two validations (None: none while training); known once steps_per_epoch is."""
        if self.eval.every_steps is not None:
            return self.eval.every_steps
        if self.eval.every_epochs is not None and self.steps_per_epoch is not None:
            return self.eval.every_epochs * self.steps_per_epoch
        return None

    @model_validator(mode="after")
    def _default_output_dir(self) -> "TrainConfig":
        if not self.output_dir:
            object.__setattr__(self, "output_dir", f"runs/{self.name}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config file, apply `key.path=value` overrides, validate."""
    source = read_yaml_file(path)
    data = source.data
    if data is None:
        raise ConfigError(f"{path} is empty.", "Write a training config in it; see examples/digits.yaml.")
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(
            f"{path}: the config must be a YAML mapping of keys (model, data, loss, ...), but it is a {kind}.",
            "See examples/digits.yaml for the expected shape.",
        )
    if "name" not in data:
        data["name"] = Path(path).stem
    data, overridden = apply_overrides(data, overrides)
    return validate_config(data, source, overridden)


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    data, overridden = apply_overrides(dict(data), overrides)
    return validate_config(data, YamlSource(name="<config>", data=data, root=None), overridden)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], dict[tuple, str]]:
    """Apply `a.b.c=value` (value parsed as YAML). Returns the new data and which paths came from --set."""
    data = _deep_copy(data)
    overridden: dict[tuple, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"--set {item!r} is not of the form key.path=value.",
                "Write it like --set distribution.mode=async or --set optimizer.learning_rate=0.01.",
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None or isinstance(child, str) and part in ("loss", "optimizer"):
                # `loss: mse` shorthand: --set loss.from_logits=true must still work.
                child = {"name": child} if isinstance(child, str) else {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item!r}: '{'.'.join(parts[: depth + 1])}' is a {type(child).__name__}, not a mapping.",
                    "Set the key itself instead of a sub-key.",
                )
            node = child
        node[parts[-1]] = value
        overridden[tuple(parts)] = item
    return data, overridden


def validate_config(data: dict[str, Any], source: YamlSource, overridden: Mapping[tuple, str]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        errors = _chosen_branch(err.errors(include_url=False))
        message = _describe(errors[0], source, overridden)
        more = f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} after this one.)" if len(errors) > 1 else ""
        raise ConfigError(message[0] + more, message[1]) from None


def _chosen_branch(errors: list) -> list:
    """The errors worth naming first. Of a `str | DataSpec` key: a mapping was meant as a file spec,
    so its 'not a string' goes."""
    kept = [e for e in errors if not (e["type"] == "string_type" and isinstance(e.get("input"), dict)
                                      and len(errors) > 1)]
    # A misspelt key first: its suggestion also explains the missing one it was meant to be.
    return sorted(kept or errors, key=lambda e: e["type"] != "extra_forbidden")


def _describe(error: Mapping[str, Any], source: YamlSource, overridden: Mapping[tuple, str]) -> tuple[str, str]:
    loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
    if error["type"] == "raytf_rule" and error["ctx"].get("key"):  # a rule of a whole mapping names its key
        loc = loc + tuple(error["ctx"]["key"].split("."))
    key = ".".join(str(p) for p in loc) or "(top level)"
    where = _where(loc, source, overridden)
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"Did you mean '{'.'.join(str(p) for p in loc[:-1] + (guess[0],))}'?" if guess else ""
        return (
            f"{where}unknown key '{key}'.",
            f"{hint} Valid keys here: {', '.join(valid)}.".strip(),
        )
    if kind == "raytf_rule":
        return f"{where}{key}: {error['msg']}", error["ctx"]["fix"]
    if kind == "missing":
        return f"{where}required key '{key}' is missing.", _missing_hint(loc)
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        got = error.get("input")
        guess = difflib.get_close_matches(str(got), [a.strip(" '") for a in str(allowed).replace(" or ", ",").split(",")], n=1)
        hint = f"Did you mean '{guess[0]}'? " if guess else ""
        return f"{where}{key}: {got!r} is not allowed.", f"{hint}Allowed values: {allowed}."
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    message = f"{error['msg'][0].lower()}{error['msg'][1:]}"
    return f"{where}{key}: {message}{shown}.", _value_fix(key, message)


def _value_fix(key: str, message: str) -> str:
    """The fix in the words of the failed check: 'input should be X, ...' -> 'Make KEY X.'"""
    if message.startswith("keys should be strings"):
        return "Keys are names such as steps or distribution: quote this one, or remove it."
    if key in ("data.train", "data.eval"):
        return (f"Make {key} an import path (module:function returning a tf.data.Dataset) or a file spec such as "
                "{format: parquet, paths: data/train-*.parquet, label: clicked}.")
    if message.startswith("input should be "):
        return f"Make the value of {key} {message.removeprefix('input should be ').split(',')[0]}."
    return "Fix the value of that key."


def _where(loc: tuple, source: YamlSource, overridden: Mapping[tuple, str]) -> str:
    for length in range(len(loc), 0, -1):
        if loc[:length] in overridden:
            return f"--set {overridden[loc[:length]]}: "
    for path, item in overridden.items():  # --set a.b=1 turned the scalar `a` into a mapping
        if path[: len(loc)] == loc:
            return f"--set {item}: "
    line = source.line_of(loc)
    return f"{source.name}:{line}: " if line else f"{source.name}: "


def _is_union_tag(part: Any) -> bool:
    # pydantic adds type names like 'str' or 'function-after[...]' into locs of unions/validators.
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "none", "DataSpec"})


def _fields_at(loc: tuple) -> list[str]:
    model: Any = TrainConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_type(field.annotation)
    return sorted(getattr(model, "model_fields", {}))


def _model_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def _missing_hint(loc: tuple) -> str:
    examples = {
        ("model",): "model: examples.digits:build_model",
        ("data",): "data: {train: examples.digits:train_examples}",
        ("data", "train"): "train: examples.digits:train_examples",
        ("loss",): "loss: sparse_categorical_crossentropy",
        ("loss", "name"): "name: sparse_categorical_crossentropy",
        ("optimizer", "name"): "name: adam",
    }
    example = examples.get(tuple(loc))
    return f"Add it, for example `{example}`." if example else "Add it."


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


__all__ = [
    "DataConfig",
    "DistributionConfig",
    "EvalConfig",
    "DataSpec",
    "LossConfig",
    "OptimizerConfig",
    "Resources",
    "SparseConfig",
    "TraceConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "parse_yaml",
]
