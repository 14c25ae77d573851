"""The promotion rule: does a newly trained policy replace the champion?

Both policies play the same held-out episodes (same problems, same seeds); the new one becomes
`champion` only if its success rate beats the champion's by more than a margin, so noise of a few
episodes does not flip the registry back and forth. With no champion yet, the first policy wins.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    candidate_success: float
    champion_success: float | None  # None: no champion yet
    margin: float
    heldout_episodes: int
    champion_version: int | None = None  # the registry version the candidate was compared with

    @property
    def reason(self) -> str:
        if self.champion_success is None:
            return "no champion yet: the first policy becomes champion"
        verdict = "beats" if self.promote else "does not beat"
        return (
            f"held-out success {self.candidate_success:.3f} {verdict} the champion's {self.champion_success:.3f} "
            f"by more than {self.margin:+.3f} ({self.heldout_episodes} episodes each)"
        )

    def metrics(self) -> dict[str, float]:
        values = {
            "promotion/candidate_heldout_success": self.candidate_success,
            "promotion/heldout_episodes": float(self.heldout_episodes),
            "promotion/promoted": 1.0 if self.promote else 0.0,
            "promotion/margin": self.margin,
        }
        if self.champion_success is not None:
            values["promotion/champion_heldout_success"] = self.champion_success
        return values


def decide_promotion(
    candidate_success: float, champion_success: float | None, *, margin: float, heldout_episodes: int,
    champion_version: int | None = None,
) -> PromotionDecision:
    """Promote when there is no champion, or when candidate - champion > margin."""
    promote = champion_success is None or candidate_success - champion_success > margin
    return PromotionDecision(promote, candidate_success, champion_success, margin, heldout_episodes, champion_version)
