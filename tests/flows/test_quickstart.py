"""`dartflow store demo` end to end (real tiny model, real processes, real LanceDB), and the quickstart run naming."""

from pathlib import Path

import pytest

from dartflow.flows.cli import main
from dartflow.storage import TrajectoryStore

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")


@pytest.mark.slow
def test_store_demo_builds_the_model_and_fills_the_store_with_lineage(tmp_path, capsys):
    overrides = [
        f"work_dir={tmp_path}",
        "rollout.group_size=2",
        "rollout.max_turns=2",
        "rollout.max_new_tokens=6",
        "training.batch_size=4",
        "training.micro_batch_size=2",
    ]
    assert main(["store", "demo", QUICKSTART, *overrides]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "models" / "tiny" / "model.safetensors").is_file()

    store = TrajectoryStore(str(tmp_path / "lancedb"))
    assert store.count() == 2 * 8 * 2  # writers x groups per writer x group size
    # Rows are version 0 and the staleness bound is 2: exactly trainer versions 0, 1, 2 consumed a batch.
    for version in (0, 1, 2):
        assert store.lineage(version).num_rows == 4
    assert store.lineage(3).num_rows == 0
    replayed = store.replay(0)
    assert replayed["trajectory_id"].to_pylist() == store.lineage(0)["trajectory_id"].to_pylist()
    assert "20 left unconsumed (staleness > 2 at trainer version 3)" in out

    # A second run reuses the model and appends a new run beside the first.
    assert main(["store", "demo", QUICKSTART, *overrides]) == 0
    assert "reusing" in capsys.readouterr().out
    assert store.count() == 2 * 32
    assert main(["store", "lineage", "--version", "0", QUICKSTART, f"work_dir={tmp_path}"]) == 2
    assert "several runs" in capsys.readouterr().err


def test_quickstart_runs_get_a_fresh_name_when_the_configured_one_is_taken(tmp_path):
    from dartflow.flows.commands import unused_run_name

    runs = tmp_path / "runs"
    assert unused_run_name(runs, "quickstart") == "quickstart"  # no runs folder yet
    (runs / "quickstart").mkdir(parents=True)
    assert unused_run_name(runs, "quickstart") == "quickstart-2"
    (runs / "quickstart-2").mkdir()
    (runs / "quickstart-4").mkdir()
    assert unused_run_name(runs, "quickstart") == "quickstart-3"
