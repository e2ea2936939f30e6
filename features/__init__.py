"""The Feast feature repository and the feature computation it serves.

    compute.py      the feature definitions: as-of user and item features from the clean lake
    spec.py         names, versions, TTLs and the file layout (no Feast import)
    offline.py      daily offline snapshots (parquet), incremental and idempotent
    definitions.py  the Feast objects; `feast apply` inside features/ finds them
    store.py        the store from the settings: apply, materialize, training sets, status
    online.py       OnlineFeatureReader for the serving hot path
    skew.py         online/offline skew check and backfill
    bench.py        online read latency
    cli.py          `recsys features ...`

Nothing heavy is imported here, so importing a submodule stays cheap. What this module does:
Feast decorates its classes with typeguard's ``@typechecked``, which recompiles every method
from its source each time a process imports ``feast`` (about half of that import: 5-6 s on a
slow 2-core machine, paid by every service start, materialization and training run). Those
checks guard hand-written Feast definitions, so this package's processes import Feast without
them, and keep them where definitions are written: ``recsys features apply`` (which calls
:func:`check_feast_types` first), the Feast CLI run inside ``features/`` (its own process),
and any process with ``RECSYS_FEAST_TYPECHECKS=1`` in its environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any

_check_types = os.environ.get("RECSYS_FEAST_TYPECHECKS", "").strip().lower() in {"1", "true", "yes"}


def check_feast_types() -> bool:
    """Keep typeguard's run-time checks in Feast for this process: call before Feast is
    imported. Returns whether they are on (False when Feast was already imported without)."""
    global _check_types
    _check_types = True
    return "feast" not in sys.modules or getattr(sys.modules["feast"], _MARK, True)


def feast_types_checked() -> bool | None:
    """Whether the Feast imported in this process checks its arguments' types (None: not
    imported yet)."""
    feast = sys.modules.get("feast")
    return None if feast is None else getattr(feast, _MARK, True)


_MARK = "__recsys_typechecked__"


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """typeguard's ``typechecked`` that instruments nothing (bare or with options)."""
    return target if target is not None else (lambda decorated: decorated)


class _FeastWithoutTypeguard(importlib.abc.MetaPathFinder):
    """Finds ``feast`` and its submodules as the path finder does, and executes each with
    ``typeguard.typechecked`` swapped for :func:`_unchecked` unless checks were asked for."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname != "feast" and not fullname.startswith("feast."):
            return None
        if fullname == "feast" and _check_types:
            return None  # the ordinary import: checked
        if fullname != "feast" and getattr(sys.modules.get("feast"), _MARK, True):
            return None  # a submodule of a checked Feast: the ordinary import
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module  # this module's own loader instance: the override is local

        def exec_module(module, _execute=execute):
            if fullname == "feast":
                setattr(module, _MARK, False)
            try:
                import typeguard
            except ImportError:  # a Feast without typeguard: nothing to swap
                _execute(module)
                return
            saved = typeguard.typechecked
            typeguard.typechecked = _unchecked
            try:
                _execute(module)
            finally:
                typeguard.typechecked = saved

        loader.exec_module = exec_module
        return spec


if not any(isinstance(f, _FeastWithoutTypeguard) for f in sys.meta_path):
    sys.meta_path.insert(0, _FeastWithoutTypeguard())
