"""Named pause points, so a crash test can kill a real process at an exact step.

``pause_point(name)`` does nothing unless the environment variable ``RECSYS_TEST_PAUSE_AT``
equals ``name``. Then the process prints ``recsys: paused at NAME (pid N)`` to stderr, creates
the file named by ``RECSYS_TEST_PAUSE_MARKER`` (when set) and sleeps for up to
:data:`PAUSE_SECONDS`, so the test sees the marker and sends SIGKILL there. Nothing in the
project sets the variable; only ``tests/test_crash_safety.py`` does, for its subprocesses.

The points, in the order a run reaches them:

    registry.in_run               the MLflow run is open and holds params and metrics, no
                                  model version yet
    registry.after_version        model version created (with its gate tags), no alias moved
    promotion.after_alias         the first alias of a move changed, the others not yet
    promotion.after_record        the move is in the history, its journal not yet removed
    features.after_offline        offline snapshots and manifest written, nothing online yet
    write:<file name>             recsys.lake.atomic_write_bytes wrote the new content of
                                  <file name> beside it, not yet renamed over it (for
                                  example write:registry.db, the Feast registry)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PAUSE_ENV = "RECSYS_TEST_PAUSE_AT"
MARKER_ENV = "RECSYS_TEST_PAUSE_MARKER"
PAUSE_SECONDS = 300.0


def pause_point(name: str) -> None:
    """Pause here when ``$RECSYS_TEST_PAUSE_AT == name`` (see the module docstring)."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    print(f"recsys: paused at {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{name} {os.getpid()}\n")
    time.sleep(PAUSE_SECONDS)
