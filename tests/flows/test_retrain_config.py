from datetime import datetime, timezone

from dartflow.config import load_config
from dartflow.flows.serve import retrain_config


def test_each_retrain_gets_a_fresh_run_name_and_seed_starts_from_the_champion_and_applies_promotion():
    config = load_config(None, ["run_name=nightly", "tracking.promotion.margin=0.1"])
    first = retrain_config(config, datetime(2026, 11, 26, 3, 0, 0, tzinfo=timezone.utc))
    second = retrain_config(config, datetime(2026, 11, 27, 3, 0, 0, tzinfo=timezone.utc))
    assert first.run_name == "nightly-20261126-030000" and second.run_name == "nightly-20261127-030000"
    assert first.seed != second.seed  # a new problem order each time
    assert first.tracking.start_from_champion and first.tracking.promotion.enabled
    assert first.tracking.promotion.margin == 0.1  # the rest of the config as given
    assert not config.tracking.start_from_champion  # the deployment's own config is untouched
