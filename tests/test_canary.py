"""The canary decision rule: CTR non-inferiority with a minimum sample, and the guardrails."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.canary import ArmStats, CanaryPolicy, decide_canary, wilson_lower_bound

POLICY = CanaryPolicy()


def simulated_arm(rng: np.random.Generator, requests: int, ctr: float, **extra) -> ArmStats:
    """An arm whose requests are clicked with the true probability ``ctr``."""
    return ArmStats(requests, int(rng.binomial(requests, ctr)), **extra)


def verdicts(champion_ctr: float, challenger_ctr: float, requests: int, runs: int = 400):
    """How often each action is taken over ``runs`` simulated canaries of ``requests`` per arm."""
    rng = np.random.default_rng(20260101)
    counts = {"promote": 0, "rollback": 0, "continue": 0}
    for _ in range(runs):
        decision = decide_canary(
            simulated_arm(rng, requests, champion_ctr),
            simulated_arm(rng, requests, challenger_ctr),
        )
        counts[decision.action] += 1
    return {action: n / runs for action, n in counts.items()}


def test_a_truly_better_challenger_is_promoted():
    rates = verdicts(champion_ctr=0.30, challenger_ctr=0.36, requests=1500)
    assert rates["promote"] >= 0.95
    assert rates["rollback"] == 0.0


def test_a_challenger_with_20_percent_lower_ctr_is_rolled_back():
    rates = verdicts(champion_ctr=0.30, challenger_ctr=0.24, requests=3000)
    assert rates["rollback"] >= 0.95
    assert rates["promote"] == 0.0


def test_a_challenger_just_outside_the_margin_is_rarely_promoted():
    # the non-inferiority null: exactly `margin` worse; promotion is the type I error (<= alpha)
    rates = verdicts(champion_ctr=0.30, challenger_ctr=0.30 * (1 - POLICY.margin), requests=3000)
    assert rates["promote"] <= POLICY.alpha + 0.02


def test_an_equal_challenger_is_rarely_rolled_back():
    rates = verdicts(champion_ctr=0.30, challenger_ctr=0.30, requests=1000)
    assert rates["rollback"] <= POLICY.alpha


def test_equal_small_samples_continue():
    decision = decide_canary(ArmStats(300, 90), ArmStats(300, 87))
    assert decision.action == "continue"
    assert decision.reason.startswith("no verdict yet")
    lower, upper = (
        decision.evidence["difference_lower_bound"],
        decision.evidence["difference_upper_bound"],
    )
    assert lower < -decision.evidence["allowed_loss"] < upper


def test_below_the_minimum_sample_even_a_large_gap_waits():
    decision = decide_canary(ArmStats(5000, 1500), ArmStats(299, 10))
    assert decision.action == "continue"
    assert "300 needed" in decision.reason


def test_no_verdict_by_the_maximum_sample_keeps_the_champion():
    champion, challenger = ArmStats(5000, 1500), ArmStats(5000, 1450)
    decision = decide_canary(champion, challenger)
    assert decision.action == "rollback"
    assert decision.reason.startswith("inconclusive after 5000 requests per arm")
    one_short = decide_canary(ArmStats(5000, 1500), ArmStats(4999, 1450))
    assert one_short.action == "continue"


def test_the_evidence_carries_the_test_statistics_and_the_rule():
    decision = decide_canary(ArmStats(2000, 600), ArmStats(2000, 720))
    assert decision.action == "promote"
    evidence = decision.evidence
    assert evidence["ctr_champion"] == pytest.approx(0.30)
    assert evidence["ctr_challenger"] == pytest.approx(0.36)
    se = np.sqrt(0.3 * 0.7 / 2000 + 0.36 * 0.64 / 2000)
    assert evidence["standard_error"] == pytest.approx(se, abs=1e-6)
    assert evidence["z"] == pytest.approx(1.6449, abs=1e-4)
    assert evidence["difference_lower_bound"] == pytest.approx(0.06 - 1.6449 * se, abs=1e-4)
    assert "two-proportion" in decision.rule and "z = 1.645" in decision.rule


def test_a_stricter_alpha_needs_more_evidence():
    champion, challenger = ArmStats(400, 120), ArmStats(400, 132)
    assert decide_canary(champion, challenger, CanaryPolicy(alpha=0.2)).action == "promote"
    assert decide_canary(champion, challenger, CanaryPolicy(alpha=0.01)).action == "continue"


# ---- guardrails ------------------------------------------------------------------------------

GOOD_CTR = {"champion": (1000, 300), "challenger": (1000, 360)}


def arms(champion: dict | None = None, challenger: dict | None = None):
    return (
        ArmStats(*GOOD_CTR["champion"], **{"p99_ms": 80.0, "coverage": 0.6, **(champion or {})}),
        ArmStats(
            *GOOD_CTR["challenger"], **{"p99_ms": 85.0, "coverage": 0.55, **(challenger or {})}
        ),
    )


def test_healthy_guardrails_let_the_ctr_decide():
    assert decide_canary(*arms()).action == "promote"


def test_an_error_rate_above_the_limit_rolls_back_despite_a_better_ctr():
    decision = decide_canary(*arms(challenger={"errors": 40}))
    assert decision.action == "rollback"
    assert decision.reason.startswith("guardrail: error rate 4.00%")
    assert decision.evidence["error_rate"]["challenger"] == pytest.approx(0.04)


def test_a_broken_challenger_is_stopped_before_the_minimum_sample():
    champion = ArmStats(200, 60)
    decision = decide_canary(champion, ArmStats(20, 2, errors=8))
    assert decision.action == "rollback" and "error rate" in decision.reason


def test_errors_both_arms_share_do_not_reject_the_challenger():
    decision = decide_canary(*arms(champion={"errors": 50}, challenger={"errors": 50}))
    assert decision.action == "promote"


def test_a_slow_challenger_is_rolled_back():
    decision = decide_canary(*arms(challenger={"p99_ms": 400.0}))
    assert decision.action == "rollback"
    assert "p99 400 ms above 250 ms" in decision.reason


def test_a_slow_machine_is_not_the_challengers_fault():
    decision = decide_canary(*arms(champion={"p99_ms": 390.0}, challenger={"p99_ms": 400.0}))
    assert decision.action == "promote"


def test_latency_is_judged_only_on_a_full_sample():
    # the first requests after a reload are slow; a few of them must not decide
    decision = decide_canary(ArmStats(1000, 300, p99_ms=80.0), ArmStats(50, 15, p99_ms=900.0))
    assert decision.action == "continue"


def test_a_challenger_that_narrows_the_catalog_is_rolled_back():
    decision = decide_canary(*arms(challenger={"coverage": 0.2}))
    assert decision.action == "rollback"
    assert "coverage 0.200 below 0.5 x the champion's 0.600" in decision.reason


def test_every_breach_is_listed():
    decision = decide_canary(*arms(challenger={"errors": 100, "p99_ms": 900.0, "coverage": 0.1}))
    assert decision.action == "rollback"
    assert len(decision.evidence["guardrail_breaches"]) == 3


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [(0, 100, 0.0), (50, 100, 0.4182), (10, 10, 0.7877), (0, 0, 0.0)],
)
def test_wilson_lower_bound(successes, trials, expected):
    assert wilson_lower_bound(successes, trials, 0.05) == pytest.approx(expected, abs=1e-3)
