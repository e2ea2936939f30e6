"""A cheaper dask token for the list-valued feature columns Feast's file offline store reads.

Feast's file offline store (``type: file``) runs on dask, and dask names every step of a
retrieval or a materialization by a token of its input. For an object column (our
``user_category_affinity``: one float array per row) dask's default token pickles and
unpickles the whole column at least twice to prove the pickle deterministic: 0.6-0.9 s for the
22,500 rows of a 20-day demo (0.014 s with this token), paid several times per
``get_historical_features`` and per materialization, and growing with the history. In
``recsys demo`` that was 63 s of the driver's 570 s of CPU (py-spy). This token hashes the
rows' bytes, their lengths and dtype once: the same content gives the same token, other
content another (``tests/test_features.py``). Any other array keeps dask's own token.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

_installed = False
_lock = threading.Lock()


def numeric_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(lengths, concatenated values) of an object array (pandas keeps a column as a 2-d
    block) whose every element, in C order, is a 1-d numeric array of one dtype; None for
    anything else."""
    if x.dtype != object or x.size == 0:
        return None
    x = x.reshape(-1)
    first = x[0]
    if not isinstance(first, np.ndarray) or first.dtype.kind not in "biuf":
        return None
    dtype = first.dtype
    for value in x:
        if type(value) is not np.ndarray or value.dtype != dtype or value.ndim != 1:
            return None
    lengths = np.fromiter((len(v) for v in x), dtype=np.int64, count=len(x))
    return lengths, np.concatenate(list(x))


def install() -> None:
    """Register the token for numeric-row object arrays with dask (once per process)."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        from dask.hashing import hash_buffer_hex
        from dask.tokenize import normalize_token

        # dask registers numpy's normalizers lazily, on the first numpy dispatch: trigger that
        # first, or it would later replace this one
        dask_own = normalize_token.dispatch(np.ndarray)

        def normalize_array(x: np.ndarray) -> Any:
            rows = numeric_rows(x)
            if rows is None:
                return dask_own(x)
            lengths, values = rows
            return (
                "recsys-numeric-rows",
                x.shape,
                values.dtype.str,
                hash_buffer_hex(lengths.view(np.uint8)),
                hash_buffer_hex(np.ascontiguousarray(values).view(np.uint8)),
            )

        normalize_token.register(np.ndarray)(normalize_array)
        _installed = True
