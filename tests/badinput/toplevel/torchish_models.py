"""A user module that imports a library that is not installed.

Its name starts with the missing library's name (like `torch_models.py` importing `torch`), which
must not be mistaken for the user's own module being missing. The tests put this directory on
sys.path, so the import path is `torchish_models:build_model`.
"""

import torchish  # noqa: F401  (deliberately not installed)


def build_model():
    raise AssertionError("unreachable")
