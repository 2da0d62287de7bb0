"""The failover state machine, alone: take-over, cache fallback, gradual recovery, no flapping."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mdstream.core.failover_policy import (
    Health,
    InstrumentState,
    ServeCache,
    StopCache,
    Subscribe,
    Unsubscribe,
    step,
)

UP, TRIAL, DOWN = Health.UP, Health.TRIAL, Health.DOWN
ORDER = ("alpaca", "polygon", "finnhub")
HOLD = 10


def run(state, health, now):
    return step("AAPL", ORDER, state, health, now, HOLD)


def test_start_on_primary():
    state, actions = run(InstrumentState(), {"alpaca": UP, "polygon": UP, "finnhub": UP}, 0)
    assert state.active == "alpaca" and state.trial is None
    assert actions == [Subscribe("alpaca", "AAPL")]


def test_primary_down_secondary_takes_over_at_once():
    state, _ = run(InstrumentState(), {"alpaca": UP, "polygon": UP}, 0)
    state, actions = run(state, {"alpaca": DOWN, "polygon": UP}, 1)
    assert state.active == "polygon"
    assert actions == [Subscribe("polygon", "AAPL"), Unsubscribe("alpaca", "AAPL")]


def test_all_down_serves_cache_once_then_any_provider_ends_it():
    state, _ = run(InstrumentState(), {"alpaca": UP}, 0)
    state, actions = run(state, {}, 1)
    assert state.active is None and state.caching
    assert actions == [Unsubscribe("alpaca", "AAPL"), ServeCache("AAPL")]
    state, actions = run(state, {}, 2)
    assert actions == []  # no repeated ServeCache
    state, actions = run(state, {"finnhub": UP}, 3)
    assert state.active == "finnhub" and not state.caching
    assert actions == [Subscribe("finnhub", "AAPL"), StopCache("AAPL")]


def test_half_open_provider_is_used_when_nothing_is_up():
    state, actions = run(InstrumentState(caching=True), {"polygon": TRIAL}, 0)
    assert state.active == "polygon"
    assert StopCache("AAPL") in actions


def test_recovery_is_a_trial_then_a_switch_after_the_hold():
    state, _ = run(InstrumentState(), {"alpaca": DOWN, "polygon": UP}, 0)
    assert state.active == "polygon"
    # Primary's breaker half-opens: subscribed on trial next to the secondary.
    state, actions = run(state, {"alpaca": TRIAL, "polygon": UP}, 1)
    assert (state.active, state.trial) == ("polygon", "alpaca")
    assert actions == [Subscribe("alpaca", "AAPL")]
    # Breaker closes: UP, but not for long enough yet.
    state, actions = run(state, {"alpaca": UP, "polygon": UP}, 2)
    assert (state.active, state.trial, actions) == ("polygon", "alpaca", [])
    state, actions = run(state, {"alpaca": UP, "polygon": UP}, 2 + HOLD - 1)
    assert state.active == "polygon"
    state, actions = run(state, {"alpaca": UP, "polygon": UP}, 2 + HOLD)
    assert (state.active, state.trial) == ("alpaca", None)
    assert actions == [Unsubscribe("polygon", "AAPL")]


def test_flapping_primary_never_takes_traffic_back():
    state, _ = run(InstrumentState(), {"alpaca": DOWN, "polygon": UP}, 0)
    now = 1
    for _ in range(5):
        state, _ = run(state, {"alpaca": UP, "polygon": UP}, now)
        now += HOLD - 1
        state, actions = run(state, {"alpaca": DOWN, "polygon": UP}, now)
        assert state.active == "polygon"
        assert Unsubscribe("alpaca", "AAPL") in actions  # the trial ends with the relapse
        now += 1
    assert state.active == "polygon"


def test_failed_trial_is_dropped_and_secondary_keeps_serving():
    state, _ = run(InstrumentState(), {"alpaca": DOWN, "polygon": UP}, 0)
    state, _ = run(state, {"alpaca": TRIAL, "polygon": UP}, 1)
    state, actions = run(state, {"alpaca": DOWN, "polygon": UP}, 2)
    assert (state.active, state.trial) == ("polygon", None)
    assert actions == [Unsubscribe("alpaca", "AAPL")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries({p: st.sampled_from(list(Health)) for p in ORDER}),
        min_size=1,
        max_size=40,
    )
)
def test_invariants(healths):
    """Actions replay to the state's subscriptions; an UP provider is never left unused for the
    cache; the active provider is never DOWN; at most two subscriptions."""
    state = InstrumentState()
    subscribed: set[str] = set()
    for now, health in enumerate(healths):
        state, actions = run(state, health, now * 3)
        for a in actions:
            if isinstance(a, Subscribe):
                assert a.provider not in subscribed
                subscribed.add(a.provider)
            elif isinstance(a, Unsubscribe):
                subscribed.remove(a.provider)
        assert subscribed == set(state.subscribed)
        assert len(subscribed) <= 2
        if state.active is not None:
            assert health[state.active] is not DOWN
        else:
            assert all(h is DOWN for h in health.values())
        if state.trial is not None:
            assert ORDER.index(state.trial) < ORDER.index(state.active)
