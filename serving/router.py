"""Canary routing: a user goes to the challenger when a hash of their id falls under the share.

The hash is stable across processes and restarts (sha256, not Python's salted ``hash``), so a
user sees one variant for as long as the share does not change, and raising the share only
moves users from champion to challenger, never back.
"""

from __future__ import annotations

import hashlib

CHAMPION = "champion"
CHALLENGER = "challenger"


def canary_bucket(user_id: int) -> float:
    """A number in [0, 1) fixed by ``user_id``."""
    digest = hashlib.sha256(f"recsys-canary:{int(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route(user_id: int, share: float, has_challenger: bool) -> str:
    """``challenger`` for users whose bucket is below ``share`` (if a challenger is loaded),
    else ``champion``."""
    if has_challenger and canary_bucket(user_id) < share:
        return CHALLENGER
    return CHAMPION
