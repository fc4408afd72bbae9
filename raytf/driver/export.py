"""A trained model as a TensorFlow SavedModel, for TF Serving (`raytf export OUTPUT_DIR --savedmodel DEST`).

The run's `model.keras` is loaded (with raytf's layers registered, no cluster needed) and exported by
Keras's own `Model.export(format="tf_saved_model")`: its `serve` signature takes the model's inputs.
A `DynamicEmbedding` goes in as its hash table of the live keys and rows: unknown keys read the zero
row, as in the Keras model. A ragged input (a list of ids per example) is a dense tensor in the
signature, padded with '' (string keys) or -1 (int keys).
"""

from __future__ import annotations

from pathlib import Path

from raytf.errors import ConfigError


def model_path(output_dir: Path) -> Path:
    """The trained model of a run's output_dir (or a .keras file given directly)."""
    path = Path(output_dir)
    candidate = path if path.suffix == ".keras" else path / "model.keras"
    if not candidate.is_file():
        raise ConfigError(f"{candidate} does not exist: there is no trained model there.",
                          "Pass the output_dir of a finished `raytf train` run (it holds model.keras), or the .keras "
                          "file itself.")
    return candidate


def export_savedmodel(output_dir: Path, destination: Path) -> tuple[Path, list[str]]:
    """Write the run's model as a SavedModel into `destination` (which must not exist yet). Returns it and
    the names of the model's ragged inputs: the signature takes them as dense tensors (a signature's inputs
    are tensors), padded with '' (strings) or -1 (int keys), which a DynamicEmbedding does not count."""
    import keras

    import raytf.replica.dynamic_embedding  # noqa: F401 - registers raytf's layers for load_model

    source = model_path(output_dir)
    destination = Path(destination)
    if destination.exists():
        raise ConfigError(f"{destination} exists already; a SavedModel export does not overwrite anything.",
                          "Give a new directory, or remove that one first.")
    model = keras.models.load_model(source, compile=False)  # serving needs no optimizer (nor its warning)
    model.export(str(destination), format="tf_saved_model", verbose=False)
    return destination, [tensor.name for tensor in model.inputs if getattr(tensor, "ragged", False)]
