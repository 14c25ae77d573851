"""The latency knob: delays drawn right, slept for real, reproducible, validated at config time."""

import math
import random
import statistics
import time

import pytest

from dartflow.tasks.envs.latency import FixedLatency, LatencyEnvironment, LognormalLatency, draw_delay
from dartflow.tasks.envs.protocol import Environment
from dartflow.tasks.envs.registry import (
    EnvironmentConfigError,
    check_environment,
    make_environment,
    make_problem_source,
)


def test_fixed_delay_is_slept_before_every_reset_and_step():
    env = make_environment("guess_number", {"latency": {"kind": "fixed", "seconds": 0.02}})
    assert isinstance(env, LatencyEnvironment) and isinstance(env, Environment)
    assert env.name == "guess_number" and "integer" in env.action_format
    problem = make_problem_source("guess_number").problem("train", 0)
    start = time.perf_counter()
    env.reset(problem)
    results = [env.step("1"), env.step("2"), env.step("3")]
    elapsed = time.perf_counter() - start
    assert 4 * 0.02 <= elapsed < 4 * 0.02 + 0.3
    assert all(result.info["injected_latency_s"] == 0.02 for result in results)
    assert results[0].info["invalid_action"] is False  # the wrapped environment's info is kept


def test_lognormal_draws_have_the_configured_median_spread_and_cap():
    spec = LognormalLatency(kind="lognormal", median=0.05, sigma=1.0, max_seconds=0.5)
    rng = random.Random(0)
    delays = [draw_delay(spec, rng) for _ in range(20_000)]
    assert statistics.median(delays) == pytest.approx(0.05, rel=0.05)
    assert max(delays) == 0.5  # about 1% of draws exceed exp(2.3 sigma) * median and are cut
    uncut = [math.log(d) for d in delays if d < 0.5]
    assert statistics.pstdev(uncut) == pytest.approx(1.0, rel=0.08)  # a little under 1: the tail is cut


def test_lognormal_sleeps_are_real_and_reported():
    spec = {"kind": "lognormal", "median": 0.004, "sigma": 0.5, "max_seconds": 0.02, "seed": 3}
    env = make_environment("arithmetic", {"latency": spec})
    source = make_problem_source("arithmetic")
    reported = 0.0
    start = time.perf_counter()
    for index in range(15):
        env.reset(source.problem("train", index))
        reported += env.step("0").info["injected_latency_s"]
    elapsed = time.perf_counter() - start
    assert 0.002 * 15 < reported < 0.02 * 15  # mean draw ~0.0045
    assert elapsed >= reported  # resets sleep too, unreported
    assert elapsed < 2 * reported + 0.02 * 15 + 0.3


def delays_of(env, problem, steps=5):
    env.reset(problem)
    return [env.step("1").info["injected_latency_s"] for _ in range(steps)]


def test_delays_are_reproducible_per_problem_and_episode():
    spec = {"kind": "lognormal", "median": 0.0005, "sigma": 1.0, "max_seconds": 0.002}
    source = make_problem_source("guess_number")
    a, b = make_environment("guess_number", {"latency": spec}), make_environment("guess_number", {"latency": spec})
    first, second = source.problem("train", 1), source.problem("train", 2)
    assert delays_of(a, first) == delays_of(b, first)
    assert delays_of(a, second) != delays_of(a, first)
    assert delays_of(a, first) != delays_of(make_environment("guess_number", {"latency": spec}), first)  # episode 2 vs 1
    seeded = make_environment("guess_number", {"latency": {**spec, "seed": 9}})
    assert delays_of(seeded, first) != delays_of(make_environment("guess_number", {"latency": spec}), first)


def test_latency_leaves_problems_alone():
    plain = make_problem_source("guess_number").problem("train", 4)
    slowed = make_problem_source("guess_number", {"latency": {"kind": "fixed", "seconds": 1}}).problem("train", 4)
    assert plain == slowed


def test_fixed_draw_is_the_configured_value():
    assert draw_delay(FixedLatency(kind="fixed", seconds=0.25), random.Random(0)) == 0.25


@pytest.mark.parametrize(
    ("latency", "message"),
    [
        ({"kind": "fixed"}, "parameter 'latency.fixed.seconds'"),
        ({"kind": "fixed", "seconds": -1}, "parameter 'latency.fixed.seconds'"),
        ({"kind": "uniform", "seconds": 1}, "parameter 'latency'.*'fixed', 'lognormal'"),
        ({"kind": "lognormal", "median": 0.1}, "parameter 'latency.lognormal.sigma'"),
        ({"kind": "lognormal", "median": 0.1, "sigma": 1, "max": 3}, "unknown parameter 'latency.lognormal.max'"),
        (0.05, "parameter 'latency'"),
    ],
)
def test_bad_latency_is_rejected_at_config_time_naming_the_field(latency, message):
    with pytest.raises(EnvironmentConfigError, match=message):
        check_environment("guess_number", {"latency": latency})
