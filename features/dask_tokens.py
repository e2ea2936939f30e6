"""A cheaper dask token for the list-valued feature columns Feast's file offline store reads.

Feast's file offline store (``type: file``) runs on dask, and dask names every step of a
retrieval or a materialization by a token of its input. For an object column (our
``user_category_affinity`` and ``user_recent_items``: one array per row) dask's default token
pickles and unpickles the whole column at least twice to prove the pickle deterministic:
0.6-0.9 s for the 22,500 rows of a 20-day demo (0.014 s with this token), paid several times per
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


def numeric_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(lengths, the values' bytes, dtypes) of an object array whose every element is a 1-d
    numeric array; None for anything else. pandas keeps object columns together in a 2-d block
    (one column per row of it): each column may have its own dtype (the user view's float
    affinity and int recent items), one dtype within a column."""
    if x.dtype != object or x.size == 0 or x.ndim > 2:
        return None
    columns = x.reshape(1, -1) if x.ndim == 1 else x
    lengths, parts, dtypes = [], [], []
    for column in columns:
        first = column[0]
        if not isinstance(first, np.ndarray) or first.dtype.kind not in "biuf":
            return None
        dtype = first.dtype
        for value in column:
            if type(value) is not np.ndarray or value.dtype != dtype or value.ndim != 1:
                return None
        dtypes.append(dtype.str)
        lengths.append(np.fromiter((len(v) for v in column), dtype=np.int64, count=len(column)))
        parts.extend(np.ascontiguousarray(v).view(np.uint8) for v in column)
    return np.concatenate(lengths), np.concatenate(parts), ",".join(dtypes)


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
            lengths, values, dtypes = rows
            return (
                "recsys-numeric-rows",
                x.shape,
                dtypes,
                hash_buffer_hex(lengths.view(np.uint8)),
                hash_buffer_hex(values),
            )

        normalize_token.register(np.ndarray)(normalize_array)
        _installed = True
