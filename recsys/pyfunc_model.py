"""MLflow "models from code" entry: the release unit as an ``mlflow.pyfunc`` model, no pickle.

MLflow copies this file into the logged model and runs it on load; ``load_context`` reads the
release arrays with ``allow_pickle=False``. Input: a frame with ``user_id`` and optional ``k``
(rows without one take the ``k`` of ``params``, 10 by default); output: one row per recommended
item (``user_id``, ``rank``, ``item_id``, ``score``, ``fallback``).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ReleasePyfunc(PythonModel):
    """Wraps :class:`recsys.release.Release` for ``mlflow.pyfunc.load_model``."""

    def load_context(self, context) -> None:
        from recsys.release import Release

        self.release = Release.load(context.artifacts["release"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Raises ValueError naming the row for a ``k`` below 1 (a missing ``k``: 10)."""
        rows = []
        default_k = _k((params or {}).get("k"), 10, "params")
        for index, record in enumerate(pd.DataFrame(model_input).to_dict("records")):
            k = _k(record.get("k"), default_k, f"row {index}")
            rec = self.release.recommend(int(record["user_id"]), k)
            for rank, (item, score) in enumerate(zip(rec.item_ids, rec.scores, strict=True), 1):
                rows.append(
                    {
                        "user_id": int(record["user_id"]),
                        "rank": rank,
                        "item_id": int(item),
                        "score": float(score),
                        "fallback": rec.fallback or "",
                    }
                )
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "fallback"])


def _k(value, default: int, where: str) -> int:
    if value is None or pd.isna(value):
        return default
    if int(value) != value or value < 1:
        raise ValueError(f"k must be a whole number >= 1, got {value!r} in {where}")
    return int(value)


mlflow.models.set_model(ReleasePyfunc())
