import pytest

from dartflow.tasks.evaluation.promotion import decide_promotion


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "promote"),
    [
        (0.30, None, 0.05, True),  # no champion: the first policy wins
        (0.30, 0.20, 0.05, True),  # 0.10 > 0.05
        (0.25, 0.20, 0.05, False),  # 0.05 is not more than 0.05
        (0.20, 0.20, 0.00, False),  # a tie keeps the champion
        (0.19, 0.20, -0.05, True),  # a negative margin tolerates a small loss
        (0.10, 0.20, -0.05, False),
    ],
)
def test_the_new_policy_becomes_champion_only_when_it_wins_by_more_than_the_margin(candidate, champion, margin, promote):
    decision = decide_promotion(candidate, champion, margin=margin, heldout_episodes=64)
    assert decision.promote is promote
    assert decision.metrics()["promotion/promoted"] == float(promote)


def test_the_decision_says_why_with_both_scores():
    decision = decide_promotion(0.25, 0.20, margin=0.05, heldout_episodes=64, champion_version=3)
    assert decision.reason == (
        "held-out success 0.250 does not beat the champion's 0.200 by more than +0.050 (64 episodes each)"
    )
    assert decision.metrics()["promotion/champion_heldout_success"] == 0.20
    assert "promotion/champion_heldout_success" not in decide_promotion(0.2, None, margin=0, heldout_episodes=8).metrics()
    assert decide_promotion(0.2, None, margin=0, heldout_episodes=8).reason.startswith("no champion yet")
