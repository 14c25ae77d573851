"""Retraining from the champion and the promotion rule, on the train flow's side.

A run with `tracking.start_from_champion` starts from the policy the registry's `champion` alias
points at (downloaded from MLflow; the configured model when there is none yet) and skips the BC
warm-up: it continues a trained policy. A run with `tracking.promotion.enabled`, once its final
held-out evaluation is done, swaps the champion's weights into the still running engine and plays
the very same held-out episodes (same problems, same seeds) with it; after the new policy is
registered (alias `candidate`), `champion` moves to it only if tasks/evaluation/promotion.py says so.
The decision, both scores and the number of episodes go to MLflow (metrics `promotion/*`, tag
`dartflow.promotion`) and to a Prefect markdown artifact.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dartflow.config import RunConfig

if TYPE_CHECKING:
    from dartflow.flows.train import RunState
    from dartflow.tasks.evaluation.promotion import PromotionDecision

CHAMPION = "champion"


def champion_dir(config: RunConfig, version: int) -> Path:
    return config.work_dir / "models" / f"{config.tracking.model_name}-champion-v{version}"


def fetch_champion(config: RunConfig) -> tuple[Path, int] | None:
    """(HF folder, registry version) of the current champion, downloaded once per version; None if none."""
    from dartflow.storage.tracking import download_policy, registered_version

    version = registered_version(config.mlflow_uri, config.tracking.model_name, CHAMPION)
    if version is None:
        return None
    target = champion_dir(config, version)
    policy = next(iter(target.glob("**/config.json")), None)
    if policy is None:
        download_policy(config.mlflow_uri, config.tracking.model_name, CHAMPION, target)
        policy = next(iter(target.glob("**/config.json")), None)
    if policy is None:
        raise FileNotFoundError(f"the champion ({config.tracking.model_name} v{version}) has no HF model folder in MLflow")
    return policy.parent, version


async def compare_with_champion(state: RunState) -> PromotionDecision:
    """The held-out success of the champion on the episodes the new policy just played (the engine is
    left holding the champion's weights: call it after the run's last evaluation)."""
    from dartflow.tasks.evaluation.heldout import evaluate_heldout
    from dartflow.tasks.evaluation.promotion import decide_promotion

    config, candidate = state.config, state.last_evaluation
    margin = config.tracking.promotion.margin
    champion = await asyncio.to_thread(fetch_champion, config)
    if champion is None:
        return decide_promotion(candidate.success_rate, None, margin=margin, heldout_episodes=candidate.episodes)
    path, registry_version = champion
    started = time.time()
    await state.engine.update_weights(state.trainer.version, path)
    result = await evaluate_heldout(
        config, engine=state.engine, cluster=state.cluster, store=state.store, prompter=state.service.prompter,
        metadata={"evaluated_policy": f"{CHAMPION} v{registry_version}"},
    )
    state.intervals.append(("evaluation", started, time.time()))
    if result.episodes != candidate.episodes:  # the same episodes, or the comparison means nothing
        raise RuntimeError(f"the champion played {result.episodes} held-out episodes, the new policy {candidate.episodes}")
    return decide_promotion(
        candidate.success_rate, result.success_rate, margin=margin, heldout_episodes=result.episodes,
        champion_version=registry_version,
    )


def apply_promotion(state: RunState, registered: int) -> None:
    """Move `champion` to the just registered version when the decision says so; log the decision."""
    from dartflow.storage.tracking import set_model_alias

    decision, config = state.promotion, state.config
    if decision.promote:
        set_model_alias(config.mlflow_uri, config.tracking.model_name, CHAMPION, registered)
    state.tracker.log_metrics(decision.metrics(), step=state.trainer.version)
    state.tracker.set_tags({
        "dartflow.promotion": "promoted" if decision.promote else "kept as candidate",
        "dartflow.promotion_reason": decision.reason,
    })
    outcome = f"now {CHAMPION}" if decision.promote else "stays candidate"
    print(f"promotion: {config.tracking.model_name} v{registered} {outcome}: {decision.reason}", flush=True)


def promotion_markdown(state: RunState, registered: int | None) -> str:
    decision, name = state.promotion, state.config.tracking.model_name
    champion = "none yet" if decision.champion_success is None else (
        f"v{decision.champion_version}: {decision.champion_success:.3f}"
    )
    return "\n".join([
        f"# Promotion: {name} v{registered} {'promoted to champion' if decision.promote else 'kept as candidate'}",
        "",
        "| | |",
        "|---|---|",
        f"| new policy held-out success | {decision.candidate_success:.3f} |",
        f"| champion held-out success | {champion} |",
        f"| held-out episodes (each) | {decision.heldout_episodes} |",
        f"| margin | {decision.margin:+.3f} |",
        f"| decision | {decision.reason} |",
    ])
