"""Adaptive throttling (router/throttle.py): silent while the upstream accepts, keeping most of the load
back from one that refuses, and forgetting after its window."""

import random

from penstock.router.throttle import MIN_REQUESTS, AdaptiveThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_refused_while_the_upstream_accepts() -> None:
    throttle = AdaptiveThrottle(rng=random.Random(1), clock=Clock())
    for _ in range(1000):
        assert throttle.allow()
        throttle.accepted()
    assert throttle.refused == 0


def test_most_requests_to_a_refusing_upstream_stay_here_and_it_is_tried_again_later() -> None:
    clock = Clock()
    throttle = AdaptiveThrottle(window_s=120, rng=random.Random(1), clock=clock)
    sent = 0
    for _ in range(1000):
        clock.now += 0.01
        sent += throttle.allow()  # never accepted
    assert MIN_REQUESTS <= sent < 60  # the first ten, then (requests - 0) / (requests + 1) of the rest refused
    assert throttle.refused == 1000 - sent
    clock.now += 121  # the window has passed: the refusals are forgotten
    assert all(throttle.allow() for _ in range(MIN_REQUESTS))


def test_an_upstream_accepting_more_than_one_in_k_is_not_throttled() -> None:
    """With K = 2, requests - 2 x accepts stays below zero while more than half are accepted."""
    throttle = AdaptiveThrottle(rng=random.Random(1), clock=Clock())
    for at in range(400):
        assert throttle.allow()
        if at % 5 < 3:  # three in five accepted
            throttle.accepted()
