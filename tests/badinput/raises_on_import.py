"""A module that fails while being imported (like a user module with a bug at top level)."""

raise KeyError("TRAINING_DATA_DIR")
