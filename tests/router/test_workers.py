"""Real `penstock worker` processes behind a real `penstock serve`: `penstock bench failover`'s run,
small, with the issue's targets held as behaviour (nobody fails before a first token, nothing hangs)."""

from penstock.bench.failover import FailoverOptions, run_failover_bench


def test_a_killed_worker_is_ejected_at_once_and_no_request_before_its_first_token_fails() -> None:
    result = run_failover_bench(FailoverOptions(concurrency=4, duration_s=8, kill_at_s=3, max_tokens=16, recover=True))
    assert len(result.calls_per_replica) == 2 and min(result.calls_per_replica) > 0  # the route used both
    assert result.ok > 0
    assert result.ejected_after_s is not None and result.ejected_after_s <= 1.0
    assert result.failed_before_first_token == 0
    assert result.hung == 0 and result.broken == 0  # every cut stream ended with its error event and [DONE]
    assert result.recovered_after_s is not None  # back on its port: the breaker closed again
