import pytest
from pydantic import BaseModel

from dartflow.tasks.curation.settings import CurationConfig


def _all_fields(model: type[BaseModel], prefix: str = ""):
    for name, info in model.model_fields.items():
        yield prefix + name, info
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _all_fields(annotation, prefix + name + ".")


def test_default_is_the_uniform_baseline():
    config = CurationConfig()
    assert config.enabled_rules() == []
    assert (config.difficulty.prior_alpha, config.difficulty.prior_beta) == (1.0, 1.0)
    assert config.difficulty.recent_versions is None


def test_every_field_has_a_description():
    missing = [name for name, info in _all_fields(CurationConfig) if not info.description]
    assert missing == []


def test_enabled_rules_names_each_switch():
    config = CurationConfig.model_validate(
        {
            "rollout_budget": {"enabled": True},
            "step_selection": {"enabled": True, "keep_fraction": 1.0},
            "duration": {"mode": "whole_groups"},
        }
    )
    assert config.enabled_rules() == ["rollout_budget", "step_selection", "duration"]


@pytest.mark.parametrize(
    ("section", "fields", "named"),
    [
        ("rollout_budget", {"min_group_size": 8, "max_group_size": 4}, "min_group_size"),
        ("rollout_budget", {"min_group_size": 1}, "min_group_size"),
        ("rollout_budget", {"min_group_size": 4, "rollouts_per_round": 3}, "rollouts_per_round"),
        ("rollout_budget", {"hit_probability": 1.0}, "hit_probability"),
        ("turn_limit", {"min_turns": 6, "max_turns": 3}, "min_turns"),
        ("turn_limit", {"max_turns": 0}, "max_turns"),
        ("difficulty", {"prior_alpha": 0}, "prior_alpha"),
        ("difficulty", {"recent_versions": 0}, "recent_versions"),
        ("step_selection", {"keep_fraction": 0.0}, "keep_fraction"),
        ("step_selection", {"keep_fraction": 1.5}, "keep_fraction"),
        ("experience_pool", {"capacity_per_problem": 0}, "capacity_per_problem"),
        ("experience_pool", {"hard_threshold": 0}, "hard_threshold"),
        ("dynamic_sampling", {"reward_tolerance": -0.1}, "reward_tolerance"),
        ("duration", {"mode": "sometimes"}, "mode"),
        ("duration", {"typo": 1}, "typo"),
    ],
)
def test_bad_field_raises_value_error_naming_it(section, fields, named):
    with pytest.raises(ValueError) as error:
        CurationConfig.model_validate({section: fields})
    assert section in str(error.value) and named in str(error.value)


def test_unknown_section_is_rejected():
    with pytest.raises(ValueError, match="pools"):
        CurationConfig.model_validate({"pools": {}})


def test_turn_limit_without_max_defers_to_the_environment():
    assert CurationConfig.model_validate({"turn_limit": {"enabled": True, "min_turns": 50}}).turn_limit.max_turns is None
