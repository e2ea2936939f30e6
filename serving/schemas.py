"""Request and response schemas of the recommendation service (validated by pydantic)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ScoredItem(BaseModel):
    item_id: int
    score: float


class RecommendResponse(BaseModel):
    request_id: str = Field(description="Quote it in /feedback to tie an event to this answer.")
    user_id: int
    items: list[ScoredItem]
    model_version: str | None = Field(
        description="Registry version of the model that answered (None: no model could)."
    )
    variant: str | None = Field(description="champion or challenger (canary); None if degraded.")
    fallback: str | None = Field(
        None,
        description="Set when a degraded path answered: cold_start (unknown user), cache (the "
        "model failed; the user's last good answer), degraded (popularity).",
    )
    cached: bool = Field(False, description="True when the answer came from the cache.")


class FeedbackResponse(BaseModel):
    request_id: str
    attributed: bool = Field(
        description="False when the request_id is unknown to this process (too old, or served "
        "before a restart): the event is kept with variant and model_version null."
    )
    variant: str | None
    model_version: str | None
