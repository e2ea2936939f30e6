"""The failures the demo injects, each a small function that breaks one thing the way it breaks
in production. The guardian must find and heal every one without being told.

    corrupt-batch          a delivery with nulls, duplicated rows and a renamed column
    drift                  a share of the users change their tastes (the world's drift_day)
    stale-online-store     the day's materialization is silently skipped
    stale-cache            cache entries stamped with a superseded model survive a deploy
    bad-challenger         a challenger that passes the offline gate but loses online
    champion-degradation   a bad release is made champion without a canary (a hot fix)

"Passes offline but loses online" is produced by a packaging fault: the ranker that ships is not
the one that was evaluated (its output layer is negated, so it ranks the candidates backwards),
while the version carries the evaluated model's holdout metrics. Nothing but online traffic can
tell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.errors import RecsysError

FAULTS: tuple[str, ...] = (
    "corrupt-batch",
    "stale-online-store",
    "stale-cache",
    "drift",
    "bad-challenger",
    "champion-degradation",
)


def parse_faults(text: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (``None``/``"all"``: every fault; ``"none"``: none)."""
    if text is None or text.strip() == "all":
        return list(FAULTS)
    if text.strip() in {"", "none"}:
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise RecsysError(f"unknown faults {unknown}; the faults are {', '.join(FAULTS)}")
    return list(dict.fromkeys(names))


def corrupt_delivery(frame: pd.DataFrame, seed: int, share: float = 0.1) -> pd.DataFrame:
    """A broken delivery of ``frame``: ``share`` of the rows with a null user, ``share`` of the
    rows duplicated, and the ``value`` column renamed to ``rating_value`` by the producer."""
    rng = np.random.default_rng(seed)
    broken = frame.copy()
    broken["user_id"] = broken["user_id"].astype("Int64")
    n = len(broken)
    if n:
        nulls = rng.choice(n, size=max(1, int(share * n)), replace=False)
        broken.loc[broken.index[nulls], "user_id"] = pd.NA
        dupes = broken.iloc[rng.choice(n, size=max(1, int(share * n)), replace=False)]
        broken = pd.concat([broken, dupes], ignore_index=True)
    return broken.rename(columns={"value": "rating_value"})


def sabotage_ranker(release) -> None:
    """Negate the output layer of every ranker member in place, so the release ranks its
    candidates backwards while its recorded offline metrics stay those of the good model.

    Raises:
        RecsysError: the release has no torch ranker to break.
    """
    import torch
    from torch import nn

    ranker = getattr(release, "ranker", None)
    net = getattr(ranker, "net", None)
    if net is None:
        raise RecsysError("this release has no ranker to sabotage")
    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    members = getattr(net, "members", None) or [net]
    with torch.no_grad():
        for member in members:
            layers = [m for m in member.modules() if isinstance(m, nn.Linear)] or last[-1:]
            layers[-1].weight.neg_()
            if layers[-1].bias is not None:
                layers[-1].bias.neg_()
    ranker.weights_changed()
