"""The rate-limit budget relayd keeps from the Hub's answers (pure logic, with a hand-driven clock)."""

from __future__ import annotations

import pytest

from relayd.errors import Retryable
from relayd.hub_limits import RateBudget, budget_for, caller_key


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_lowest_count_of_a_window_wins_and_a_new_window_replaces_it(clock: Clock) -> None:
    budget = RateBudget(clock)
    budget.observe("api", 490, 200, 500, 300)
    clock.now += 1
    budget.observe("api", 495, 199, 500, 300)  # an older answer, arriving late
    assert [(s.name, s.remaining, s.quota, s.resets_in) for s in budget.state()] == [("api", 490, 500, 199)]
    clock.now += 200
    assert budget.state() == []  # that window is over
    budget.observe("api", 499, 300, 500, 300)
    assert budget.state()[0].remaining == 499
    budget.observe("api", 0, 12, 500, 300)  # an answer naming an earlier end: believed
    assert (budget.state()[0].remaining, budget.state()[0].resets_in) == (0, 12)


def test_spending_keeps_a_reserve_then_defers_until_the_reset(clock: Clock) -> None:
    budget = RateBudget(clock)
    budget.spend("resolvers", 100)  # nothing known yet: the answer will tell
    budget.observe("resolvers", 110, 42, 3000, 300)
    budget.spend("resolvers", 50)  # 60 left: the reserve (2 %)
    with pytest.raises(Retryable) as caught:
        budget.spend("resolvers")
    assert caught.value.error_class == "rate_limit" and caught.value.retry_after == 43
    assert str(caught.value).startswith(
        "paced: the Hub's 'resolvers' rate limit is nearly used up (60 of 3000 calls left in this window)"
    )
    budget.spend("api")  # another bucket
    clock.now += 42
    budget.spend("resolvers")  # the window has reset


def test_a_small_quota_keeps_one_call(clock: Clock) -> None:
    budget = RateBudget(clock)
    budget.observe("api", 2, 100, 5, 300)
    budget.spend("api")
    with pytest.raises(Retryable):
        budget.spend("api")
    assert budget.state()[0].low


def test_budgets_are_kept_per_hub_and_caller_without_the_token() -> None:
    first = budget_for("http://127.0.0.1:1/api/models/a/b", "Bearer hf_secret")
    assert budget_for("http://127.0.0.1:1/a/b/resolve/main/x", "Bearer hf_secret") is first
    assert budget_for("http://127.0.0.1:1/api/models/a/b", None) is not first
    assert budget_for("http://127.0.0.1:2/api/models/a/b", "Bearer hf_secret") is not first
    assert "hf_secret" not in caller_key("Bearer hf_secret") and caller_key(None) == "anonymous"
