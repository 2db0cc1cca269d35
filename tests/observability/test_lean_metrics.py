import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from penstock.observability.lean_metrics import LeanCounter, LeanHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
VALUES = (0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 3.0, 10.0, 11.0, 120.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text /metrics serves, without prometheus_client's `_created` samples (lean metrics have none)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_a_lean_histogram_and_counter_render_as_prometheus_clients_own() -> None:
    reference, lean = CollectorRegistry(), CollectorRegistry()
    ref_hist = Histogram("x_seconds", "Time", ["stage"], buckets=BUCKETS, registry=reference)
    ref_count = Counter("x_total", "Things", ["kind", "code"], registry=reference)
    lean_hist = LeanHistogram("x_seconds", "Time", ["stage"], lean, BUCKETS)
    lean_count = LeanCounter("x_total", "Things", ["kind", "code"], lean)
    for i, value in enumerate(VALUES):
        stage = "decode" if i % 3 else "prefill"
        ref_hist.labels(stage).observe(value)
        lean_hist.labels(stage).observe(value)
        ref_count.labels(stage, str(200 + i % 2)).inc(value)
        lean_count.labels(stage, str(200 + i % 2)).inc(value)
    assert exposition(lean) == exposition(reference)


def test_a_name_taken_twice_or_wrong_labels_are_refused() -> None:
    registry = CollectorRegistry()
    LeanCounter("y_total", "", ["a"], registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("y_total", "", ["a"], registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        LeanHistogram("z_seconds", "", ["a"], registry, BUCKETS).labels("a", "b")


def test_a_scrape_on_another_thread_while_series_are_added_does_not_fail() -> None:
    """A race, so this can pass by luck; without the lock it failed once in a full suite run."""
    registry = CollectorRegistry()
    counter = LeanCounter("w_total", "", ["n"], registry)
    done, failures = threading.Event(), []

    def scrape() -> None:
        while not done.is_set():
            try:
                generate_latest(registry)
            except Exception as exc:  # a thread's exception would only be a warning
                failures.append(exc)
                return

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for n in range(20_000):
            counter.labels(str(n)).inc()
    finally:
        done.set()
        scraper.join()
    assert failures == []
    assert 'w_total{n="19999"} 1.0' in generate_latest(registry).decode()
