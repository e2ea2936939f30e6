"""The torch ranker: an MLP that re-scores (user, candidate) pairs.

Listwise by default: a softmax over each user's candidates, cross-entropy against the ones the
user interacted with in the label window (``loss="pointwise"``: binary cross-entropy per
pair). Early stopping on nDCG@k of a validation split of users. Deterministic for a seed
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
    # (64, 32): nDCG@10 on ML-100K equal to (128, 64) within the run-to-run spread (8 random
    # splits; lower, within its noise, on the 83-user temporal holdout) at 0.22 instead of
    # 0.35 ms per 200-candidate list (docs/benchmarks.md, 2026-11-26 evening)
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "listwise"
    batch_users: int = 32
    batch_size: int = 2048  # rows per step for the pointwise loss
    max_epochs: int = 40
    patience: int = 5
    negatives_per_user: int = 200
    max_train_users: int = 10_000
    n_models: int = 2  # an ensemble of seeds; scores are averaged after per-list z-scoring
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


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose masks come from a numpy generator once :meth:`seed` is called.

    The same masks in distribution (keep with probability 1 - p, scaled by 1 / (1 - p); p is
    rounded to a multiple of 1/65536), three times as fast: torch's CPU generator draws each
    element separately, and dropout was 40% of the ranker's training time (``recsys demo``
    profile, 2026-11-27), more than the layers themselves. Without a seed (or with p 0 or 1) it
    is ``nn.Dropout``. Holds no weights: state dicts are those of ``nn.Dropout``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self._bits: np.random.Generator | None = None

    def seed(self, generator: np.random.Generator) -> None:
        self._bits = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self._bits is None or not 0.0 < self.p < 1.0:
            return super().forward(x)
        n = x.numel()
        bits = self._bits.bit_generator.random_raw((n + 3) // 4).view(np.uint16)[:n]
        keep = bits.reshape(x.shape) >= np.uint16(min(round(self.p * 65536), 65535))
        scale = torch.from_numpy(keep.view(np.uint8)).to(x.dtype) * (1.0 / (1.0 - self.p))
        return x * scale


class MLP(nn.Module):
    def __init__(self, n_features: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


class RankerNet(nn.Module):
    """``n_models`` MLPs over the same features; forward returns (n_models, rows) logits."""

    def __init__(
        self, n_features: int, hidden: tuple[int, ...], dropout: float, n_models: int = 1
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(MLP(n_features, hidden, dropout) for _ in range(n_models))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members])


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


def _train_member(
    member: MLP,
    batches,
    xt: torch.Tensor,
    y: np.ndarray,
    groups: np.ndarray,
    is_val: np.ndarray,
    params: RankerParams,
    seed: int,
    k: int,
    epochs: int | None,
    history: list[dict[str, float]],
    index: int,
) -> int:
    """Train one member with early stopping on validation nDCG@k; returns its best epoch."""
    torch.manual_seed(seed)
    noise = np.random.default_rng(seed)
    for layer in member.body:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
        elif isinstance(layer, Dropout):
            layer.seed(noise)
    optimizer = torch.optim.AdamW(
        member.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    best_state, best_ndcg, stale, best_epoch = None, -1.0, 0, 0
    for epoch in range(epochs or params.max_epochs):
        member.train()
        total, count = 0.0, 0
        for loss in batches(member, generator):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            count += 1
        member.eval()
        record = {"epoch": epoch + 1, "member": index, "train_loss": total / max(count, 1)}
        best_epoch = epoch + 1 if not is_val.any() else best_epoch
        if is_val.any():
            with torch.inference_mode():
                val_scores = member(xt[is_val]).numpy()
            ndcg = group_ndcg(val_scores, y[is_val], groups[is_val], k)
            record["val_ndcg"] = ndcg
            if ndcg > best_ndcg + 1e-5:
                best_ndcg, stale, best_epoch = ndcg, 0, epoch + 1
                best_state = {n: t.detach().clone() for n, t in member.state_dict().items()}
            else:
                stale += 1
        history.append(record)
        if is_val.any() and stale >= params.patience:
            break
    if best_state is not None:
        member.load_state_dict(best_state)
    member.eval()
    return best_epoch


def _pointwise_steps(xt, yt, groups, train_mask, params: RankerParams):
    """Mini-batches of rows; binary cross-entropy per (user, candidate)."""
    rows = np.flatnonzero(train_mask)
    loss_fn = nn.BCEWithLogitsLoss()

    def batches(net, generator):
        perm = rows[torch.randperm(len(rows), generator=generator).numpy()]
        for start in range(0, len(perm), params.batch_size):
            batch = torch.from_numpy(perm[start : start + params.batch_size])
            yield loss_fn(net(xt[batch]), yt[batch])

    return batches


def padded_lists(groups: np.ndarray, train_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Each training user's candidate rows, padded: (row index, valid), users x longest list."""
    rows = np.flatnonzero(train_mask)
    order = rows[np.argsort(groups[rows], kind="stable")]
    starts = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    width = int((ends - starts).max()) if len(starts) else 0
    index = np.zeros((len(starts), width), dtype=np.int64)
    mask = np.zeros((len(starts), width), dtype=bool)
    for g, (a, b) in enumerate(zip(starts, ends, strict=True)):
        index[g, : b - a] = order[a:b]
        mask[g, : b - a] = True
    return torch.from_numpy(index), torch.from_numpy(mask)


def _listwise_steps(xt, yt, groups, train_mask, params: RankerParams):
    """Mini-batches of users; softmax cross-entropy over each user's padded candidate list."""
    index_t, mask_t = padded_lists(groups, train_mask)

    def batches(net, generator):
        perm = torch.randperm(len(index_t), generator=generator)
        for start in range(0, len(perm), params.batch_users):
            users = perm[start : start + params.batch_users]
            idx, valid = index_t[users], mask_t[users]
            logits = net(xt[idx].reshape(-1, xt.shape[1])).reshape(idx.shape)
            logits = logits.masked_fill(~valid, float("-inf"))
            labels = yt[idx] * valid
            log_p = torch.log_softmax(logits, dim=1).masked_fill(~valid, 0.0)
            yield -((log_p * labels).sum(1) / labels.sum(1).clamp(min=1)).mean()

    return batches


def _fuse(
    members: list[list[tuple[torch.Tensor, torch.Tensor]]], mean: np.ndarray, std: np.ndarray
) -> tuple[tuple[torch.Tensor, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Inference weights of an ensemble: the standardisation folded into the first layer, the
    members' first layers side by side (one matrix product for all), each later layer stacked
    across members (one batched product). ``members``: per member, the (W^T, b) of each layer."""
    scale = torch.from_numpy(1.0 / std)
    shift = torch.from_numpy(-mean / std)
    firsts = [layers[0] for layers in members]
    weight = torch.cat([w * scale[:, None] for w, _ in firsts], dim=1).contiguous()
    bias = torch.cat([b + shift @ w for w, b in firsts])
    later = [
        (
            torch.stack([layers[j][0] for layers in members]).contiguous(),
            torch.stack([layers[j][1] for layers in members])[:, None, :].contiguous(),
        )
        for j in range(1, len(members[0]))
    ]
    return (weight, bias), later


class Ranker:
    """A fitted ranker: standardisation plus the network."""

    def __init__(
        self, params: RankerParams, mean: np.ndarray, std: np.ndarray, net: RankerNet
    ) -> None:
        self.params = params
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.net = net.eval()
        self._fused: tuple | None = None  # (mean, std, _inference_weights() built from them)
        self.epochs_trained = 0
        self.history: list[dict[str, float]] = []

    @property
    def n_features(self) -> int:
        return len(self.mean)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores of one list of candidates (rows); higher is better. With several members,
        each member's logits are z-scored over the list, then averaged.

        Computes what the eval-mode network's forward computes (dropout off) on the
        standardised features, as a few fused products (:func:`_fuse`) in numpy: no
        standardisation pass, one product per layer for all members, no module-call or torch
        dispatch overhead (a 200-candidate list is a few small products, where that overhead
        was a third of the time: ``docs/benchmarks.md``)."""
        rows = len(features)
        if rows == 0:
            return np.zeros(0, dtype=np.float32)
        (first_w, first_b), later = self._inference_weights()
        h = np.ascontiguousarray(features, dtype=np.float32) @ first_w  # all members at once
        h += first_b
        if later:
            np.maximum(h, 0, out=h)
            members = later[0][0].shape[0]
            h = h.reshape(rows, members, -1).transpose(1, 0, 2)  # (members, rows, width)
            for j, (weight, bias) in enumerate(later):
                h = np.matmul(h, weight)
                h += bias
                if j < len(later) - 1:
                    np.maximum(h, 0, out=h)
            logits = h[..., 0]
        else:  # no hidden layer: the first layer gave each member's logit
            logits = h.T
        members = len(logits)
        if members == 1:
            return logits[0]
        centred = logits - logits.mean(axis=1, keepdims=True)
        spread = np.sqrt(np.einsum("ij,ij->i", centred, centred) / rows)
        return (1.0 / (spread + 1e-9)).astype(np.float32) @ centred / members

    def weights_changed(self) -> None:
        """Call after changing the network's weights in place: scoring fuses them again (the
        fused weights are otherwise computed once per mean and std)."""
        self._fused = None

    def _inference_weights(self):
        """:func:`_fuse` of the eval network's weights as numpy arrays, computed once per
        (mean, std): arrays replaced on a ranker (a copy with other statistics) get weights
        fused from them."""
        fused = self._fused
        if fused is None or fused[0] is not self.mean or fused[1] is not self.std:
            members = [
                [
                    (m.weight.detach().t().contiguous(), m.bias.detach().clone())
                    for m in member.body
                    if isinstance(m, nn.Linear)
                ]
                for member in self.net.members
            ]
            (weight, bias), later = _fuse(members, self.mean, self.std)
            arrays = (
                (weight.numpy(), bias.numpy()),
                [(w.numpy(), b.numpy()) for w, b in later],
            )
            fused = self._fused = (self.mean, self.std, arrays)
        return fused[2]

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
        net = RankerNet(x.shape[1], params.hidden, params.dropout, params.n_models)
        model = cls(params, mean, std, net)
        xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
        yt = torch.from_numpy(y.astype(np.float32))
        step = _listwise_steps if params.loss == "listwise" else _pointwise_steps
        batches = step(xt, yt, groups, ~is_val, params)
        for j, member in enumerate(net.members):
            epochs_done = _train_member(
                member,
                batches,
                xt,
                y,
                groups,
                is_val,
                params,
                params.seed + j,
                k,
                epochs,
                model.history,
                j,
            )
            model.epochs_trained = max(model.epochs_trained, epochs_done)
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
        net = RankerNet(len(mean), params.hidden, params.dropout, params.n_models)
        net.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        return cls(params, mean, std, net)
