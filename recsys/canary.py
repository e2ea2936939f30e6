"""The canary decision: promote the challenger, roll it back, or let the canary run on.

The rule, in the order it is applied (``CanaryDecision.rule`` carries it as one line):

1. Guardrails; any breach rolls the challenger back at once.
   - errors: the challenger's error rate is significantly above the champion's plus
     ``max_error_rate`` (the one-sided Wilson lower bound at level ``alpha`` exceeds it). A
     significance test is valid at any sample size, so a broken model is stopped before the
     sample fills; judging the excess over the champion keeps a fault both arms share (a
     serving incident, healed elsewhere) from rejecting the challenger.
   - latency: from ``min_requests`` challenger requests on, its p99 is above ``max_p99_ms``
     and above the champion's p99 by more than ``p99_tolerance`` (relative): the same machine
     serves both arms, so a slow machine is not the challenger's fault.
   - coverage: from ``min_requests`` challenger requests on, its catalog coverage is below
     ``min_coverage_ratio`` x the champion's (coverage grows with the number of requests, so
     it is only compared once the sample is full).
2. Fewer than ``min_requests`` requests on either arm: continue.
3. CTR (share of requests with at least one click), two-proportion test with the unpooled
   standard error ``se = sqrt(p_c (1 - p_c) / n_c + p_h (1 - p_h) / n_h)``, ``d = p_h - p_c``,
   ``z = Phi^-1(1 - alpha)`` and the non-inferiority margin ``m = margin * p_c``:
   - rollback when ``d + z se < -m``: the challenger is significantly worse than
     ``champion * (1 - margin)``;
   - promote when ``d - z se > -m``: the challenger is non-inferior within the margin;
   - otherwise continue; once both arms have ``max_requests`` requests without a verdict,
     roll back as inconclusive (the champion keeps serving: the burden of proof is on the
     challenger).

Each look uses the nominal ``alpha``. The guardian looks once per cycle (a simulated day), so
the few looks inflate the error rates only a little; run many more looks with a smaller alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from scipy.stats import norm

Action = Literal["promote", "rollback", "continue"]


@dataclass
class ArmStats:
    """What one arm of the canary served: requests, requests with a click, p99 latency,
    errors (failed or degraded answers) and coverage (distinct items served / catalog)."""

    requests: int
    clicked_requests: int
    p99_ms: float | None = None
    errors: int = 0
    coverage: float | None = None

    @property
    def ctr(self) -> float:
        """Share of requests with at least one click (0 without requests)."""
        return self.clicked_requests / self.requests if self.requests else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class CanaryPolicy:
    """Thresholds of the canary rule (see the module docstring)."""

    min_requests: int = 300
    max_requests: int = 5000
    alpha: float = 0.05
    margin: float = 0.05
    max_p99_ms: float = 250.0
    max_error_rate: float = 0.01
    min_coverage_ratio: float = 0.5
    p99_tolerance: float = 0.2


@dataclass
class CanaryDecision:
    """The verdict, the reason in words, the rule applied and the numbers behind it."""

    action: Action
    reason: str
    rule: str
    evidence: dict = field(default_factory=dict)


def rule_text(policy: CanaryPolicy) -> str:
    """The decision rule with this policy's numbers, in one line."""
    z = norm.ppf(1 - policy.alpha)
    return (
        f"guardrails first (challenger error rate Wilson lower bound > champion's + "
        f"{policy.max_error_rate:g}; from {policy.min_requests} requests: p99 > "
        f"{policy.max_p99_ms:g} ms and > champion p99 x {1 + policy.p99_tolerance:g}, coverage < "
        f"{policy.min_coverage_ratio:g} x champion's) -> rollback; < {policy.min_requests} "
        f"requests on an arm -> continue; CTR two-proportion test, d = ctr_ch - ctr_c, unpooled "
        f"se, z = {z:.3f} (one-sided alpha {policy.alpha:g}), m = {policy.margin:g} x ctr_c: "
        f"d + z se < -m -> rollback; d - z se > -m -> promote; else continue until "
        f"{policy.max_requests} requests per arm -> rollback (inconclusive)"
    )


def wilson_lower_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Wilson score lower bound of a proportion (0 without trials)."""
    if trials <= 0:
        return 0.0
    z = float(norm.ppf(1 - alpha))
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - spread) / denominator)


def _guardrail_breaches(
    champion: ArmStats, challenger: ArmStats, policy: CanaryPolicy, evidence: dict
) -> list[str]:
    breaches: list[str] = []
    error_floor = champion.error_rate + policy.max_error_rate
    error_bound = wilson_lower_bound(challenger.errors, challenger.requests, policy.alpha)
    evidence["error_rate"] = {
        "champion": round(champion.error_rate, 6),
        "challenger": round(challenger.error_rate, 6),
        "challenger_lower_bound": round(error_bound, 6),
        "limit": round(error_floor, 6),
    }
    if challenger.requests and error_bound > error_floor:
        breaches.append(
            f"error rate {challenger.error_rate:.2%} ({challenger.errors}/{challenger.requests}, "
            f"lower bound {error_bound:.2%}) above the champion's {champion.error_rate:.2%} + "
            f"{policy.max_error_rate:.2%}"
        )
    full_sample = challenger.requests >= policy.min_requests
    evidence["p99_ms"] = {"champion": champion.p99_ms, "challenger": challenger.p99_ms}
    if full_sample and challenger.p99_ms is not None and challenger.p99_ms > policy.max_p99_ms:
        relative_limit = (
            champion.p99_ms * (1 + policy.p99_tolerance) if champion.p99_ms is not None else 0.0
        )
        if challenger.p99_ms > relative_limit:
            breaches.append(
                f"p99 {challenger.p99_ms:.0f} ms above {policy.max_p99_ms:g} ms"
                + (
                    f" and the champion's {champion.p99_ms:.0f} ms x {1 + policy.p99_tolerance:g}"
                    if champion.p99_ms is not None
                    else ""
                )
            )
    evidence["coverage"] = {"champion": champion.coverage, "challenger": challenger.coverage}
    if (
        full_sample
        and challenger.coverage is not None
        and champion.coverage is not None
        and challenger.coverage < policy.min_coverage_ratio * champion.coverage
    ):
        breaches.append(
            f"coverage {challenger.coverage:.3f} below {policy.min_coverage_ratio:g} x the "
            f"champion's {champion.coverage:.3f}"
        )
    return breaches


def decide_canary(
    champion: ArmStats, challenger: ArmStats, policy: CanaryPolicy | None = None
) -> CanaryDecision:
    """Judge a running canary with the rule of the module docstring.

    Returns ``rollback`` on a guardrail breach, a significant CTR loss beyond the margin, or
    no verdict after ``max_requests`` per arm; ``promote`` when the challenger's CTR is
    non-inferior within the margin at level ``alpha``; ``continue`` otherwise. ``evidence``
    holds every number the verdict used.
    """
    policy = policy or CanaryPolicy()
    rule = rule_text(policy)
    evidence: dict = {
        "requests": {"champion": champion.requests, "challenger": challenger.requests},
        "clicked_requests": {
            "champion": champion.clicked_requests,
            "challenger": challenger.clicked_requests,
        },
    }
    breaches = _guardrail_breaches(champion, challenger, policy, evidence)
    if breaches:
        evidence["guardrail_breaches"] = breaches
        return CanaryDecision("rollback", "guardrail: " + "; ".join(breaches), rule, evidence)
    n_c, n_h = champion.requests, challenger.requests
    if min(n_c, n_h) < policy.min_requests:
        return CanaryDecision(
            "continue",
            f"collecting: {n_h} challenger and {n_c} champion requests, "
            f"{policy.min_requests} needed on each",
            rule,
            evidence,
        )
    p_c, p_h = champion.ctr, challenger.ctr
    diff = p_h - p_c
    se = math.sqrt(p_c * (1 - p_c) / n_c + p_h * (1 - p_h) / n_h)
    z = float(norm.ppf(1 - policy.alpha))
    allowed_loss = policy.margin * p_c
    lower, upper = diff - z * se, diff + z * se
    evidence.update(
        ctr_champion=round(p_c, 6),
        ctr_challenger=round(p_h, 6),
        ctr_difference=round(diff, 6),
        relative_lift=round(diff / p_c, 6) if p_c else None,
        standard_error=round(se, 6),
        z=round(z, 4),
        difference_lower_bound=round(lower, 6),
        difference_upper_bound=round(upper, 6),
        allowed_loss=round(allowed_loss, 6),
    )
    summary = (
        f"CTR {p_h:.4f} vs champion {p_c:.4f} (difference {diff:+.4f}, one-sided "
        f"{1 - policy.alpha:.0%} bounds [{lower:+.4f}, {upper:+.4f}], allowed loss "
        f"{allowed_loss:.4f}; {n_h} vs {n_c} requests)"
    )
    if upper < -allowed_loss:
        return CanaryDecision(
            "rollback",
            f"significantly worse than the champion less the margin: {summary}",
            rule,
            evidence,
        )
    if lower > -allowed_loss:
        return CanaryDecision(
            "promote", f"non-inferior within the margin: {summary}", rule, evidence
        )
    if min(n_c, n_h) >= policy.max_requests:
        return CanaryDecision(
            "rollback",
            f"inconclusive after {policy.max_requests} requests per arm, the champion stays: "
            f"{summary}",
            rule,
            evidence,
        )
    return CanaryDecision("continue", f"no verdict yet: {summary}", rule, evidence)
