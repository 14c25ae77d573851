from pathlib import Path

import pytest

from dartflow.config import ConfigError, RunConfig, apply_overrides, load_config

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_validates():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs, "configs/ holds no YAML file"
    for path in configs:
        assert isinstance(load_config(path), RunConfig)


def test_embedded_defaults_validate_without_a_file():
    config = load_config(None)
    assert config.work_dir == Path("dartflow-data")
    assert config.store_uri == str(Path("dartflow-data") / "lancedb")


def test_dotted_override_sets_nested_field_with_yaml_typing():
    config = load_config(REPO / "configs/quickstart.yaml", ["training.lr=1e-5", "rollout.engine.enforce_eager=false"])
    assert config.training.lr == pytest.approx(1e-5)
    assert config.rollout.engine.enforce_eager is False


def test_override_into_list_of_environments_replaces_it():
    config = load_config(None, ["environments=[{name: 'reasoning_gym:basic_arithmetic'}]"])
    assert [env.name for env in config.environments] == ["reasoning_gym:basic_arithmetic"]


def test_unknown_key_is_an_error_naming_its_path():
    with pytest.raises(ConfigError, match=r"training\.lrr: unknown field"):
        load_config(None, ["training.lrr=3"])


def test_out_of_range_value_names_field_and_bound():
    with pytest.raises(ConfigError, match=r"training\.clip_eps: Input should be less than 1 \(got 1\.5\)"):
        load_config(None, ["training.clip_eps=1.5"])


def test_wrong_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"rollout\.in_flight_on_swap: Input should be 'finish' or 'requeue'"):
        load_config(None, ["rollout.in_flight_on_swap=drop"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"rollout\.group_size"):
        load_config(None, ["rollout.group_size=many"])


def test_all_errors_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["training.lr=-1", "rollout.top_p=0", "storage.nope=1"])
    message = str(info.value)
    assert "training.lr" in message and "rollout.top_p" in message and "storage.nope" in message


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="micro_batch_size"):
        load_config(None, ["training.batch_size=4", "training.micro_batch_size=8"])
    with pytest.raises(ConfigError, match="num_heads"):
        load_config(None, ["model.tiny.hidden_size=100", "model.tiny.num_heads=3"])


def test_rollouts_the_trainer_cannot_score_are_refused():
    # The trainer scores softmax(logits / rollout.temperature) over the whole vocabulary.
    with pytest.raises(ConfigError, match=r"rollout\.temperature must be > 0 for training: greedy"):
        load_config(None, ["rollout.temperature=0"])
    with pytest.raises(ConfigError, match=r"rollout\.top_p must be 1 for training \(got 0\.9\): vLLM renormalises"):
        load_config(None, ["rollout.top_p=0.9"])
    assert load_config(None, ["rollout.temperature=0.7", "evaluation.temperature=0"]).rollout.temperature == 0.7


def test_model_path_source_needs_an_existing_hf_folder(tmp_path):
    with pytest.raises(ConfigError, match="model.path is required"):
        load_config(None, ["model.source=path"])
    with pytest.raises(ConfigError, match="no config.json"):
        load_config(None, ["model.source=path", f"model.path={tmp_path}"])
    (tmp_path / "config.json").write_text("{}")
    assert load_config(None, ["model.source=path", f"model.path={tmp_path}"]).model_dir == tmp_path


def test_bad_environment_name_is_rejected():
    with pytest.raises(ConfigError, match="environments.0.name"):
        load_config(None, ["environments=[{name: 'guess number!'}]"])


def test_malformed_override_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["training.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(REPO / "configs/quickstart.yaml", ["run_name.x=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    bad.write_text("training: {lr: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_everything_a_run_writes_derives_from_work_dir(tmp_path):
    config = load_config(None, [f"work_dir={tmp_path}"])
    assert Path(config.store_uri).is_relative_to(tmp_path)
    assert config.model_dir.is_relative_to(tmp_path)
    assert str(tmp_path.resolve()) in config.mlflow_uri


def test_apply_overrides_does_not_touch_other_keys():
    raw = {"training": {"lr": 1.0, "steps": 3}}
    assert apply_overrides(raw, ["training.lr=2"]) == {"training": {"lr": 2, "steps": 3}}


def test_environments_are_checked_against_the_registry_at_config_time():
    with pytest.raises(ConfigError, match=r"environments\.0.*unknown parameter 'lo'"):
        load_config(None, ["environments=[{name: guess_number, params: {lo: 3}}]"])
    with pytest.raises(ConfigError, match=r"environments\.0.*Wordle-v0 needs NLTK"):
        load_config(None, ["environments=[{name: 'textarena:Wordle-v0'}]"])
    config = load_config(None, ["environments=[{name: 'reasoning_gym:basic_arithmetic'}, {name: 'textarena:TowerOfHanoi-v0'}]"])
    assert len(config.environments) == 2


def test_curation_groups_must_fit_a_batch():
    with pytest.raises(ConfigError, match=r"max_group_size \(32\) must be <= training.batch_size \(16\)"):
        load_config(None, ["training.batch_size=16", "curation.rollout_budget.enabled=true", "curation.rollout_budget.max_group_size=32"])
    with pytest.raises(ConfigError, match=r"turn_limit.min_turns \(9\) must be <= rollout.max_turns"):
        load_config(None, ["rollout.max_turns=4", "curation.turn_limit.enabled=true", "curation.turn_limit.min_turns=9"])
    with pytest.raises(ConfigError, match="dynamic_sampling.enabled needs groups of at least 2 rollouts"):
        load_config(None, ["rollout.group_size=1", "curation.dynamic_sampling.enabled=true"])
    assert load_config(None, ["curation.dynamic_sampling.enabled=true"]).curation.dynamic_sampling.enabled
    config = load_config(None, ["curation.rollout_budget.enabled=true", "curation.rollout_budget.max_group_size=8"])
    assert config.largest_group() == 8 and load_config(None).largest_group() == load_config(None).rollout.group_size


def test_the_engine_context_must_fit_the_tiny_models_positions():
    with pytest.raises(ConfigError, match=r"max_model_len \(4096\) exceeds the tiny model's model.tiny.max_position_embeddings \(2048\)"):
        load_config(None, ["rollout.engine.max_model_len=4096"])
    assert load_config(None, ["rollout.engine.max_model_len=4096", "model.tiny.max_position_embeddings=4096"])
