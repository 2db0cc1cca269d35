from penstock.config import BreakerConfig
from penstock.router.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **config: float) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(**config), clock)


def test_consecutive_failures_open_it_and_a_probe_closes_it() -> None:
    clock = Clock()
    circuit = breaker(clock, consecutive_failures=3, open_s=5)
    for _ in range(2):
        circuit.failed()
    assert circuit.state is BreakerState.CLOSED
    circuit.failed()
    assert circuit.state is BreakerState.OPEN and not circuit.available()
    clock.now = 4.9
    assert not circuit.available()
    clock.now = 5.0
    assert circuit.state is BreakerState.HALF_OPEN and circuit.available()
    circuit.begin()
    assert not circuit.available()  # one probe at a time
    circuit.succeeded()
    assert circuit.state is BreakerState.CLOSED and circuit.opened == 1


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    circuit = breaker(clock, consecutive_failures=1, open_s=1)
    circuit.failed()
    clock.now = 1.0
    circuit.begin()
    circuit.failed()
    assert circuit.state is BreakerState.OPEN and circuit.opened == 2
    clock.now = 1.5
    assert not circuit.available()


def test_a_failure_rate_over_the_window_opens_it_once_enough_calls_are_in() -> None:
    circuit = breaker(Clock(), consecutive_failures=100, window=10, min_calls=10, failure_rate=0.5)
    for _ in range(4):
        circuit.succeeded()
        circuit.failed()
    assert circuit.state is BreakerState.CLOSED  # 8 calls: too few to judge
    circuit.succeeded()
    circuit.failed()
    assert circuit.state is BreakerState.OPEN


def test_slow_calls_open_it() -> None:
    circuit = breaker(Clock(), min_calls=4, window=4, slow_call_s=1, slow_call_rate=0.75)
    for seconds in (0.1, 2, 2, 2):
        circuit.succeeded(seconds)
    assert circuit.state is BreakerState.OPEN


def test_health_checks_open_it_and_close_it_but_do_not_undo_what_calls_proved() -> None:
    clock = Clock()
    circuit = breaker(clock, consecutive_failures=1, open_s=60)
    circuit.trip(by_health=True)
    assert not circuit.available()
    circuit.healthy()
    assert circuit.state is BreakerState.CLOSED
    circuit.failed()  # opened by a call now
    circuit.healthy()
    assert circuit.state is BreakerState.OPEN
