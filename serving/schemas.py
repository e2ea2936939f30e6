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
    model_version: str = Field(description="Registry version of the model that answered.")
    variant: str = Field(description="champion or challenger (canary).")
    fallback: str | None = Field(
        None, description="Set when a degraded path answered: cold_start, popularity, cache."
    )
