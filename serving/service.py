"""The BentoML recommendation service.

    bentoml serve serving.service:RecommenderService --host 127.0.0.1 --port 3000
    recsys serve

At start it loads the model version behind the ``champion`` alias from the MLflow registry of
the active profile (``RECSYS_*`` settings) and runs a smoke prediction; ``/readyz`` answers 200
only after both succeeded. ``POST /recommend {"user_id": 1, "k": 10}`` returns ranked items.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Annotated

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse

from recsys.config import get_settings
from recsys.errors import RecsysError
from recsys.registry import CHAMPION, load_release
from serving.schemas import RecommendResponse, ScoredItem

logger = logging.getLogger("recsys.serving")

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_SETTINGS = get_settings()
MAX_K = _SETTINGS.max_k


@bentoml.service(name="recsys", traffic={"timeout": 10}, workers=1)
class RecommenderService:
    """Serves the champion release over HTTP."""

    def __init__(self) -> None:
        self.settings = _SETTINGS
        self.release = None
        self.model_version: str | None = None
        self.load_error: str | None = None
        self.smoke_ok = False
        started = time.perf_counter()
        try:
            self.model_version, self.release = load_release(self.settings, CHAMPION)
            self._smoke_test()
        except RecsysError as exc:
            self.load_error = str(exc)
            logger.error("model not loaded: %s", exc)
        else:
            logger.info(
                "loaded %s version %s (%d users, %d items) in %.2fs",
                self.settings.model_name,
                self.model_version,
                self.release.n_users,
                self.release.n_items,
                time.perf_counter() - started,
            )

    def _smoke_test(self) -> None:
        release = self.release
        probe = int(release.user_ids[0]) if release.n_users else 0
        answer = release.recommend(probe, 1)
        if release.n_items and len(answer.item_ids) == 0:
            raise RecsysError(f"smoke prediction for user {probe} returned nothing")
        self.smoke_ok = True

    def __is_ready__(self) -> bool:
        return self.release is not None and self.smoke_ok

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        user_id: Annotated[int, Field(ge=0, description="The user to recommend for.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many items.")] = 10,
    ) -> RecommendResponse:
        """Top-k items the user has not seen yet, best first."""
        if self.release is None:
            return JSONResponse({"error": f"no model loaded: {self.load_error}"}, status_code=503)
        answer = self.release.recommend(user_id, k)
        return RecommendResponse(
            request_id=uuid.uuid4().hex,
            user_id=user_id,
            items=[
                ScoredItem(item_id=int(i), score=float(s))
                for i, s in zip(answer.item_ids, answer.scores, strict=True)
            ],
            model_version=str(self.model_version),
            variant="champion",
            fallback=answer.fallback,
        )
