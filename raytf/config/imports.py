"""Resolve `module:attribute` import paths named in a config."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Any, Callable

from raytf.errors import ConfigError


def ensure_cwd_on_path() -> None:
    """Import paths resolve against the current directory, as with `python -m`."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def resolve_callable(path: str, key: str) -> Callable[..., Any]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"{key}: '{path}' is not an import path.",
            "Write it as module:function, for example examples.digits:build_model.",
        )
    ensure_cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConfigError(
                f"{key}: cannot import module '{module_name}' (no module named '{err.name}').",
                f"Check the spelling, and run raytf from the directory that contains it or add that directory to PYTHONPATH (current directory: {os.getcwd()}).",
            ) from None
        raise ConfigError(
            f"{key}: importing module '{module_name}' failed because it imports '{err.name}', which is not installed.",
            f"Install it (pip install {err.name}) on the machine and on the cluster.",
        ) from None
    except Exception as err:  # noqa: BLE001 - user code failed at import; report it, with its type
        raise ConfigError(
            f"{key}: importing module '{module_name}' raised {type(err).__name__}: {err}.",
            "Fix the error in that module (run `python -c 'import " + module_name + "'` to see the traceback).",
        ) from err
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            guess = difflib.get_close_matches(part, names, n=1)
            hint = f"Did you mean '{module_name}:{guess[0]}'?" if guess else f"It defines: {', '.join(names[:12])}."
            raise ConfigError(f"{key}: module '{module_name}' has no attribute '{part}'.", hint)
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"{key}: '{path}' is a {type(target).__name__}, not a function or class.",
            "Point it at a function that returns what raytf needs.",
        )
    return target
