"""Request and response schemas of the recommendation service (validated by pydantic)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

MAX_ID = 2**63 - 1
"""Ids are int64 in every array, file and table: a larger one is refused at the door, not left
to overflow inside the model (where it would read as a model failure)."""
ItemId = Annotated[int, Field(ge=0, le=MAX_ID, strict=True)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""NaN and infinities are not JSON: Python's parser takes them, the request log would carry them
to readers that do not."""
ContextValue = str | int | FiniteFloat | bool | None
NULLABLE = {"nullable": True}
"""BentoML's OpenAPI document keeps only the first branch of ``X | None`` (``X``): a field that
can be null says so with OpenAPI 3.0's ``nullable``, or clients are told it is never null."""


class ScoredItem(BaseModel):
    item_id: int
    score: float


class RecommendResponse(BaseModel):
    request_id: str = Field(description="Quote it in /feedback to tie an event to this answer.")
    user_id: int
    items: list[ScoredItem]
    model_version: str | None = Field(
        description="Registry version of the model that answered (None: no model could).",
        json_schema_extra=NULLABLE,
    )
    variant: str | None = Field(
        description="champion or challenger (canary); None if degraded.",
        json_schema_extra=NULLABLE,
    )
    fallback: str | None = Field(
        None,
        json_schema_extra=NULLABLE,
        description="Set when a degraded path answered: cold_start (unknown user), cache (the "
        "model failed; the user's last good answer, topped up to k with popular items when "
        "shorter, each item with the score of the list it came from), degraded (popularity). "
        "Items the user has seen are left out of both.",
    )
    features: str | None = Field(
        None,
        json_schema_extra=NULLABLE,
        description="Where the ranker's user and item features came from: online (the Feast "
        "online store), release (the online store was never materialized: the release's own "
        "tables), release_fallback (the online store failed or lacked a row: the release's rows "
        "filled in); None when no ranker ran (cold start, popularity).",
    )
    cached: bool = Field(False, description="True when the answer came from the cache.")


class FeedbackResponse(BaseModel):
    request_id: str
    attributed: bool = Field(
        description="False when the request_id is unknown to this process (too old, or served "
        "before a restart): the event is kept with variant and model_version null."
    )
    shown: bool | None = Field(
        description="Whether the answer of request_id showed item_id (null when unattributed). "
        "An event on an item it did not show is kept, but a click or purchase on it does not "
        "count toward the variant's CTR or conversion.",
        json_schema_extra=NULLABLE,
    )
    variant: str | None = Field(json_schema_extra=NULLABLE)
    model_version: str | None = Field(json_schema_extra=NULLABLE)
