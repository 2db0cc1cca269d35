from collections import Counter

from penstock.config import BreakerConfig
from penstock.router.replicas import ReplicaSet, affinity_key

URLS = ["http://a/v1", "http://b/v1", "http://c/v1"]


def prompt(prefix: int, suffix: int) -> list[int]:
    """A prompt of 64 tokens that opens like every other prompt with the same `prefix` (48 tokens)."""
    return [prefix] * 48 + [suffix] * 16


def test_prompts_sharing_their_opening_meet_the_same_replica() -> None:
    replicas = ReplicaSet(URLS, BreakerConfig(), max_concurrency=8)
    for prefix in range(20):
        keys = {affinity_key(prompt(prefix, suffix), 48) for suffix in range(5)}
        assert len(keys) == 1
        key = keys.pop()
        picked = {replicas.pick(key)[0].url for _ in range(5)}
        assert len(picked) == 1
    owners = Counter(replicas.pick(affinity_key(prompt(p, 0), 48))[0].url for p in range(300))
    assert set(owners) == set(URLS) and min(owners.values()) > 50  # the ring spreads prefixes


def test_a_busy_owner_sends_its_overflow_elsewhere_within_the_bound() -> None:
    replicas = ReplicaSet(URLS, BreakerConfig(), max_concurrency=100, balance_bound=1.25)
    key = affinity_key(prompt(1, 1), 48)
    taken = []
    for _ in range(30):
        replica, _how = replicas.pick(key)
        replica.in_flight += 1
        taken.append(replica.url)
    loads = sorted(r.in_flight for r in replicas.replicas)
    assert loads[-1] <= 1.25 * 30 / 3 + 1  # nobody past the bound
    assert Counter(taken).most_common(1)[0][0] == taken[0]  # and the owner took the most


def test_least_loaded_without_affinity_skipping_tried_full_and_open_replicas() -> None:
    replicas = ReplicaSet(URLS, BreakerConfig(consecutive_failures=1), max_concurrency=2)
    a, b, c = replicas.replicas
    a.in_flight, b.in_flight = 1, 0
    assert replicas.pick(None)[0] in (b, c)
    b.breaker.failed()  # open
    c.in_flight = 2  # full
    assert replicas.pick(None) == (a, "least_loaded")
    assert replicas.pick(None, frozenset({a.url})) is None
    assert affinity_key([1] * 15, 256) is None  # shorter than a block: nothing to keep warm
