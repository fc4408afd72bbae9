"""TensorFlow's native start-up chatter, kept out of the user's terminal.

Importing TensorFlow and probing for devices makes its C++ side write to file descriptor 2
directly: absl's "All log messages before absl::InitializeLog()" notice, `cudart_stub` and
`cuInit` probes on machines without a GPU, the oneDNN and CPU-feature notices. None of it obeys
Python's logging, and `TF_CPP_MIN_LOG_LEVEL` does not reach what absl prints before TensorFlow
initializes its logging. So raytf points fd 2 at a temporary file while TensorFlow starts (in
the driver and in every actor), then passes on every line that is not such a native log line.
`raytf train --verbose` (and `--debug`) turn the filter off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

VERBOSE_ENV = "RAYTF_VERBOSE"

# absl/glog lines ("I0000 00:00:1796108065.020287    2614 cudart_stub.cc:31] ..."), and the notices
# TensorFlow prints around them (one continues a glog line on a line of its own).
NATIVE_LINE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+[\w./+-]+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions)"
)


def verbose_requested() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def is_native_log_line(line: str) -> bool:
    # Ray prefixes actor output with "(ActorName pid=123) " (and colour codes) on the driver.
    stripped = re.sub(r"^(?:\x1b\[[0-9;]*m)?\(.*?pid=\d+(?:, ip=[\d.]+)?\)(?:\x1b\[[0-9;]*m)?\s*", "", line.rstrip("\n"))
    return bool(NATIVE_LINE.match(stripped))


@contextlib.contextmanager
def native_stderr_filtered(verbose: bool | None = None) -> Iterator[None]:
    """Hold back TensorFlow's native log lines written to fd 2 inside the block; pass the rest on."""
    if verbose is None:
        verbose = verbose_requested()
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_native_log_line(line)]
            if kept:
                os.write(2, "".join(kept).encode())
