from penstock.config import RouterConfig
from penstock.router.retry_budget import RetryBudget


def test_retries_stay_within_their_share_of_requests_over_the_window() -> None:
    now = [0.0]
    budget = RetryBudget(RouterConfig(retry_ratio=0.1, retry_window_s=10, min_retries=2), lambda: now[0])
    granted = 0
    for _ in range(100):
        budget.request()
        granted += budget.try_spend()  # every request wants a retry: an upstream failing everything
    assert granted == 12  # 10% of 100, plus the two a quiet window always has
    assert budget.refused == 88
    now[0] = 11.0  # the window has passed: the budget is back
    budget.request()
    assert budget.try_spend()
