"""The torch ranker: an MLP that re-scores (user, candidate) pairs.

Pointwise: binary cross-entropy on "did the user interact with this candidate in the label
window". Early stopping on nDCG@k of a validation split of users. Deterministic for a seed
(one torch thread, seeded generator). Weights travel as a state dict loaded with
``weights_only=True``; feature standardisation travels beside them as plain arrays.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerParams:
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-5
    batch_size: int = 2048
    max_epochs: int = 30
    patience: int = 4
    negatives_per_user: int = 60
    max_train_users: int = 20_000
    seed: int = 42

    def as_dict(self) -> dict:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, payload: dict) -> RankerParams:
        payload = dict(payload)
        payload["hidden"] = tuple(payload.get("hidden", cls.hidden))
        return cls(**payload)


class RankerNet(nn.Module):
    def __init__(self, n_features: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


def group_ndcg(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Mean nDCG@k over groups (rows sharing a group id are one user's candidate list)."""
    order = np.lexsort((-scores, groups))
    g, y = groups[order], labels[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total, n = 0.0, 0
    for start, end in zip(starts, ends, strict=True):
        rel = y[start:end]
        n_pos = int(rel.sum())
        if n_pos == 0:
            continue
        top = rel[:k]
        total += float((top * discounts[: len(top)]).sum() / discounts[: min(n_pos, k)].sum())
        n += 1
    return total / max(n, 1)


class Ranker:
    """A fitted ranker: standardisation plus the network."""

    def __init__(
        self, params: RankerParams, mean: np.ndarray, std: np.ndarray, net: RankerNet
    ) -> None:
        self.params = params
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.net = net.eval()
        self.epochs_trained = 0
        self.history: list[dict[str, float]] = []

    @property
    def n_features(self) -> int:
        return len(self.mean)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores (logits) of feature rows; higher is better."""
        x = torch.from_numpy(((features - self.mean) / self.std).astype(np.float32))
        with torch.inference_mode():
            return self.net(x).numpy()

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray,
        params: RankerParams,
        *,
        validation_share: float = 0.2,
        k: int = 10,
        epochs: int | None = None,
    ) -> Ranker:
        """Train on feature rows ``x`` with 0/1 labels ``y``; ``groups`` are user ids.

        A ``validation_share`` of the groups is held out for early stopping on nDCG@k; with
        ``epochs`` given, trains exactly that many epochs on everything (no early stopping).
        """
        torch.manual_seed(params.seed)
        torch.set_num_threads(1)
        rng = np.random.default_rng(params.seed)
        unique = np.unique(groups)
        if epochs is None and len(unique) >= 10:
            val_groups = rng.choice(
                unique, size=max(1, int(len(unique) * validation_share)), replace=False
            )
            is_val = np.isin(groups, val_groups)
        else:
            is_val = np.zeros(len(groups), dtype=bool)
        mean = x[~is_val].mean(axis=0)
        std = x[~is_val].std(axis=0)
        std[std < 1e-6] = 1.0
        net = RankerNet(x.shape[1], params.hidden, params.dropout)
        model = cls(params, mean, std, net)
        xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
        yt = torch.from_numpy(y.astype(np.float32))
        train_idx = np.flatnonzero(~is_val)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=params.lr, weight_decay=params.weight_decay
        )
        loss_fn = nn.BCEWithLogitsLoss()
        best_state, best_ndcg, stale = None, -1.0, 0
        generator = torch.Generator().manual_seed(params.seed)
        for epoch in range(epochs or params.max_epochs):
            net.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
            total = 0.0
            for start in range(0, len(perm), params.batch_size):
                batch = torch.from_numpy(perm[start : start + params.batch_size])
                optimizer.zero_grad()
                loss = loss_fn(net(xt[batch]), yt[batch])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            net.eval()
            record = {"epoch": epoch + 1, "train_loss": total / max(len(perm), 1)}
            if is_val.any():
                with torch.inference_mode():
                    val_scores = net(xt[is_val]).numpy()
                ndcg = group_ndcg(val_scores, y[is_val], groups[is_val], k)
                record["val_ndcg"] = ndcg
                if ndcg > best_ndcg + 1e-5:
                    best_ndcg, stale = ndcg, 0
                    best_state = {n: t.detach().clone() for n, t in net.state_dict().items()}
                    model.epochs_trained = epoch + 1
                else:
                    stale += 1
            else:
                model.epochs_trained = epoch + 1
            model.history.append(record)
            if is_val.any() and stale >= params.patience:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        return model

    # ---- persistence: a state dict (weights_only) and plain arrays -------------------------

    def state_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.net.state_dict(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_state(
        cls, params: RankerParams, mean: np.ndarray, std: np.ndarray, state: bytes
    ) -> Ranker:
        net = RankerNet(len(mean), params.hidden, params.dropout)
        net.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        return cls(params, mean, std, net)
