"""The framework's floor: a trivial BentoML endpoint with the recommendation service's settings.

    bentoml serve serving.floor:FloorService --host 127.0.0.1 --port 3001

``POST /recommend`` takes the same request (validated the same way) and answers the same
response shape with ``k`` fixed items, doing no other work. Like the service's, the endpoint is
a coroutine run on the event loop (a plain ``def`` would pay BentoML's hop to a worker thread,
which the service's endpoint does not). ``recsys bench serve`` drives it in
the same run as the real service: what the real service loses against it is what the
recommender costs, the rest is BentoML, HTTP and the load generator.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import Field

from recsys.config import get_settings
from serving.schemas import ContextValue, ItemId, RecommendResponse, ScoredItem

_SETTINGS = get_settings()
MAX_K = _SETTINGS.max_k
MAX_EXCLUDE = _SETTINGS.max_exclude

FLOOR_ITEMS = [ScoredItem(item_id=i, score=1.0 / (i + 1)) for i in range(1000)]


@bentoml.service(
    name="recsys-floor", traffic={"timeout": 10}, workers=1, http={"host": "127.0.0.1"}
)  # BentoML's own default host is 0.0.0.0
class FloorService:
    """Answers /recommend with the first ``k`` of a fixed list: no model, no cache, no logs."""

    @bentoml.api(route="/recommend")
    async def recommend(
        self,
        user_id: Annotated[int, Field(ge=0)],
        k: Annotated[int, Field(ge=1, le=MAX_K)] = 10,
        exclude: Annotated[list[ItemId], Field(max_length=MAX_EXCLUDE)] = [],  # noqa: B006
        context: Annotated[dict[str, ContextValue] | None, Field(max_length=32)] = None,
    ) -> RecommendResponse:
        return RecommendResponse(
            request_id="floor",
            user_id=user_id,
            items=FLOOR_ITEMS[:k],
            model_version=None,
            variant=None,
        )
