"""The warm-up rule on synthetic step times (no clock is read: what is tested is the decision, not a machine)."""

from __future__ import annotations

from bench.worker.warmup import FIXED, SETTLE, SettleRule


def steps_taken(rule: SettleRule, times: list[float], configured: int) -> int:
    """How many warm-up steps `rule` takes when the steps would take `times` (the first one included)."""
    taken = [times[0]]
    while rule.another_step(taken, configured):
        taken.append(times[len(taken)])
    return len(taken)


def test_the_cpu_sequence_of_the_issue_warms_up_until_three_steps_agree():
    times = [1.02, 0.88, 0.15, 0.04, 0.041, 0.039, 0.04, 0.04] + [0.04] * 30
    assert steps_taken(SETTLE, times, configured=2) == 6  # 1.02 0.88 0.15 0.04 0.041 0.039: the last three agree


def test_steps_already_settled_within_the_configured_warm_up_add_nothing():
    assert steps_taken(SETTLE, [3.0, 0.50, 0.51, 0.50, 9.9], configured=4) == 4


def test_the_configured_steps_are_always_taken_even_when_settled_earlier():
    assert steps_taken(SETTLE, [0.1] * 10, configured=7) == 7


def test_a_step_time_that_never_settles_stops_at_the_step_cap():
    noisy = [1.0, 2.0] * 40
    assert steps_taken(SETTLE, noisy, configured=3) == 3 + SETTLE.max_extra_steps


def test_slow_steps_stop_at_the_time_cap():
    rule = SettleRule(max_extra_s=10.0)
    slow = [4.0 * (1 + (i % 2)) for i in range(50)]  # 4, 8, 4, 8 ...: never settled, 12 s per two steps
    assert steps_taken(rule, slow, configured=2) == 2 + 2  # 8 + 4 = 12 s >= 10 s of extra warm-up


def test_a_slow_downward_trend_is_not_taken_for_settled():
    rule = SettleRule(window=3, rtol=0.10)
    assert not rule.settled([0.30, 0.25, 0.20])
    assert rule.settled([0.205, 0.20, 0.195])
    assert not rule.settled([0.2, 0.2])  # fewer than the window


def test_the_fixed_rule_takes_exactly_the_configured_steps():
    assert steps_taken(FIXED, [1.02, 0.88, 0.15, 0.04, 0.04, 0.04], configured=2) == 2


def _fake_setup(loss: float, calls: list):
    import torch
    from types import SimpleNamespace

    return SimpleNamespace(ranks=None, step=lambda i: calls.append(i) or torch.tensor(loss))


def test_a_diverged_first_step_takes_no_warm_up_beyond_the_configured_count():
    import torch

    from bench.worker.measure import _warm_up

    calls, train = [], {"first_step_s": 1.0}
    nan = torch.tensor(float("nan"))
    losses = _warm_up(_fake_setup(float("nan"), calls), torch.device("cpu"), SETTLE, 1, train, nan)
    assert calls == [] and len(losses) == 1 and train["warmup_steps_run"] == 1


def test_the_warm_up_loop_steps_with_consecutive_indices_up_to_the_rule_cap():
    import torch

    from bench.worker.measure import _warm_up

    never = SettleRule(rtol=-1.0, max_extra_steps=2)  # no window can settle: only the cap stops it
    calls, train = [], {"first_step_s": 1.0}
    losses = _warm_up(_fake_setup(0.5, calls), torch.device("cpu"), never, 3, train, torch.tensor(0.5))
    assert calls == [1, 2, 3, 4] and len(losses) == 5
    assert train["warmup_steps_run"] == 5 and train["warmup_step_times_s"][0] == 1.0


def test_leading_measured_steps_still_warming_up_leave_the_statistics():
    from bench.worker.warmup import settled_start

    assert settled_start([1.02, 0.88, 0.15, 0.04, 0.04, 0.041, 0.039, 0.04]) == 3  # the issue's sequence
    assert settled_start([0.04, 0.041, 0.039, 0.04]) == 0  # settled from the start
    assert settled_start([9.0, 8.0, 7.0, 0.1]) == 2  # never more than half
    assert settled_start([0.04, 0.2, 0.04, 0.04]) == 0  # one odd step later on is the measurement's own
