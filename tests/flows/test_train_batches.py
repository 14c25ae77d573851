"""The train flow's batch rules without an engine: when a batch of whole groups is full, and the
release of groups that dynamic sampling passes over."""


import pytest

from dartflow.config import load_config
from dartflow.flows.curation import batch_full, release_dropped_groups
from dartflow.flows.train import RunState


@pytest.mark.parametrize(
    ("rows", "passed_over", "full"),
    [
        (15, [], True),  # no group of the smallest size (2) fits in 1 row
        (14, [], False),  # a group of 2 may still come
        (14, [8], True),  # a waiting group of 8 did not fit: this is as full as it gets now
        (9, [8], True),  # 16 - largest (8) + 1 = 9
        (8, [8], False),  # below 16 - 8 + 1: keep waiting (smaller groups may still fill it)
        (2, [], False),
    ],
)
def test_a_batch_of_varied_groups_is_full_when_no_group_fits_or_one_was_passed_over(rows, passed_over, full):
    config = load_config(None, [
        "training.batch_size=16", "curation.rollout_budget.enabled=true",
        "curation.rollout_budget.min_group_size=2", "curation.rollout_budget.max_group_size=8",
    ])
    assert batch_full(config, rows, passed_over) is full


def test_without_curation_the_fixed_group_size_decides():
    config = load_config(None, ["training.batch_size=16", "rollout.group_size=4"])
    assert batch_full(config, 13, []) and not batch_full(config, 12, [])


class RecordingService:
    def __init__(self):
        self.released = []

    def release(self, ids, why):
        self.released.append(list(ids))


def test_each_dropped_group_is_released_to_the_gate_once():
    state = RunState(config=load_config(None), run_dir=None)
    state.service = RecordingService()
    state.dropped_groups = {"a": ["a1", "a2"]}
    release_dropped_groups(state)
    state.dropped_groups["b"] = ["b1"]
    release_dropped_groups(state)
    release_dropped_groups(state)
    assert state.service.released == [["a1", "a2"], ["b1"]]


class FakeTrainer:
    version = 3


def test_a_trainer_waiting_on_dynamic_sampling_reports_drops_and_gives_up_at_the_configured_limit(monkeypatch):
    from dartflow.flows import curation

    config = load_config(None, [
        "training.batch_size=4", "curation.dynamic_sampling.enabled=true", "curation.dynamic_sampling.max_dropped_batches=2",
    ])
    state = RunState(config=config, run_dir=None)
    state.trainer = FakeTrainer()
    state.dropped_groups = {"old": ["o1", "o2"]}  # dropped before this wait: not counted against it
    messages = []
    state.progress = type("Progress", (), {"message": staticmethod(messages.append)})()
    monkeypatch.setattr(curation, "DROP_REPORT_EVERY_S", 0.0)
    watch = curation.DropWatch(state)
    watch.check()
    assert messages == []  # nothing dropped yet: nothing to say
    state.dropped_groups |= {"a": ["a1", "a2"], "b": ["b1", "b2", "b3"]}
    watch.check()  # 5 < 2 batches of 4
    assert messages == ["dynamic sampling: 2 groups (5 trajectories) dropped while waiting for the batch of version 3"]
    state.dropped_groups["c"] = ["c1", "c2", "c3"]
    with pytest.raises(RuntimeError, match=r"dropped 8 trajectories .* version 3 .*max_dropped_batches = 2"):
        watch.check()
