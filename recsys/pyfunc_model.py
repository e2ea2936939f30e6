"""MLflow "models from code" entry: the release unit as an ``mlflow.pyfunc`` model, no pickle.

MLflow copies this file into the logged model and runs it on load; ``load_context`` reads the
release arrays with ``allow_pickle=False``. Input: a frame with ``user_id`` and optional ``k``;
output: one row per recommended item (``user_id``, ``rank``, ``item_id``, ``score``,
``fallback``).
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
        rows = []
        default_k = int((params or {}).get("k", 10))
        for record in pd.DataFrame(model_input).to_dict("records"):
            k = int(record.get("k") or default_k)
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


mlflow.models.set_model(ReleasePyfunc())
