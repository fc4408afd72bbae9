"""User-facing errors.

Every error raytf raises on purpose is a `RaytfError`: it names the problem and the fix in
one paragraph, and the CLI prints it and exits with status 2 without a traceback. The classes
carry only plain strings so they survive pickling between Ray actors and the driver.
"""

from __future__ import annotations


class RaytfError(Exception):
    """A problem the user can fix. `problem` says what is wrong, `fix` what to do about it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem, fix)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} {self.fix}".strip()

    def __reduce__(self):
        # Keep the exact class and both fields across pickling (Ray ships errors between processes).
        return (type(self), (self.problem, self.fix))


class ConfigError(RaytfError):
    """The training config (YAML, --set overrides or the callables it names) is invalid."""


class ClusterError(RaytfError):
    """The Ray cluster could not be started, found, reached or stopped."""


class TrainingError(RaytfError):
    """Training failed for a reason the user can act on (bad data, bad model, lost actors)."""


class Interrupted(RaytfError):
    """The run was stopped by Ctrl-C or SIGTERM (after a final checkpoint, when one could be written)."""

    exit_code = 130
