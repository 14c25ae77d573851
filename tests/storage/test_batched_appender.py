"""BatchedAppender: small batches validated at once, written together, durable on flush."""

import pytest

from dartflow.storage import BatchedAppender, TrajectoryStore, TrajectoryValidationError

from store_helpers import small_table


@pytest.fixture
def store(tmp_path):
    return TrajectoryStore(str(tmp_path / "store"), run_id="run-a", compact_every_appends=0)


def test_rows_are_written_together_once_enough_are_buffered(store):
    appender = BatchedAppender(store, min_rows=5, max_seconds=None)
    assert appender.add(small_table([0, 0], prefix="a")) == []
    assert appender.add(small_table([0, 0], prefix="b")) == []
    assert store.count() == 0 and appender.buffered_rows == 4
    version = store.version
    assert appender.add(small_table([0, 0], prefix="c")) == ["a0", "a1", "b0", "b1", "c0", "c1"]
    assert store.count() == 6 and store.version == version + 1  # one commit
    assert appender.buffered_rows == 0


def test_a_bad_batch_is_rejected_when_added_not_at_flush(store):
    appender = BatchedAppender(store, min_rows=10)
    appender.add(small_table([0], prefix="good"))
    with pytest.raises(TrajectoryValidationError, match="reward"):
        appender.add(small_table([0], prefix="bad").drop_columns(["reward"]))
    assert appender.flush() == ["good0"]


def test_old_rows_are_flushed_after_max_seconds_and_on_exit(store):
    with BatchedAppender(store, min_rows=100, max_seconds=0.0) as appender:
        assert appender.add(small_table([0], prefix="x")) == ["x0"]
        appender.max_seconds = None
        appender.add(small_table([0], prefix="y"))
        assert store.count() == 1
    assert store.count() == 2
