"""The train flow: environment cluster, rollout service and trainer overlapping under Prefect.

    rollout (one long task run) ──► store ──► train v0 ─► train v1 ─► ... (one task run per step)
         ▲                                        │ checkpoint v+1
         └──────── engine.update_weights ◄────────┘

In `async` mode the rollout task runs the whole time, bounded by the staleness gate; in `sync` mode
(the baseline) it produces exactly one batch, then the trainer trains on it, with staleness 0.
Everything is passed by id/version/path; the math lives in tasks/.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dartflow.config import RunConfig, validate_config
from dartflow.flows.curation import (
    DropWatch,
    batch_candidate,
    batch_full,
    curated_sampler,
    curation_metrics,
    duration_batch_correlation,
    inject_pooled_successes,
    log_curation_plan,
    pool_successes,
    release_dropped_groups,
    seed_pool_with_demonstrations,
    trainer_side_curation,
)

MAX_CONSECUTIVE_SKIPS = 3


def configure_prefect(config: RunConfig) -> None:
    """Prefect's local ephemeral mode with its home under the work dir, unless a server is configured."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str((config.work_dir / "prefect").resolve()))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline machines; no phoning home  # the run prints its own progress


@dataclass
class RunState:
    """What the flow body shares between its tasks (all in one process and event loop)."""

    config: RunConfig
    run_dir: Path
    trainer: Any = None
    store: Any = None
    engine: Any = None
    cluster: Any = None
    service: Any = None
    tracker: Any = None
    intervals: list[tuple[str, float, float]] = field(default_factory=list)  # timeline plot
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    reward_history: list[tuple[int, float]] = field(default_factory=list)
    staleness: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    rl_done: int = 0  # RL steps done before this flow run (resume)
    skipped_ids: set[str] = field(default_factory=set)  # batches of skipped (non-finite) steps
    consecutive_skips: int = 0
    tracker_link: str = ""
    sampler: Any = None  # the curated sampler, when a sampler-side curation rule is on
    # dynamic sampling: groups of equal rewards passed over (group id -> trajectory ids), and how many
    # of them were already reported and released to the staleness gate
    dropped_groups: dict[str, list[str]] = field(default_factory=dict)
    dropped_reported: int = 0
    dropped_released: int = 0
    background: Any = None  # the async rollout task, while it runs
    pool_injections: int = 0
    # Both measured from the store: cached per (trainer version, trajectory-table version), i.e.
    # again whenever new rollouts arrived (while the trainer waits, difficulty keeps being measured).
    poolable: tuple[tuple[int, int], frozenset] = ((-1, -1), frozenset())  # hard problems with pool members
    hard: tuple[tuple[int, int], frozenset] = ((-1, -1), frozenset())  # hard problems
    batch_poolable: frozenset = frozenset()  # the poolable set dynamic sampling chose the latest batch with
    progress: Any = None  # the run's TrainProgress, for messages while the trainer waits
    last_evaluation: Any = None  # the latest EvaluationResult
    champion_start: int | None = None  # registry version of the champion this run started from
    promotion: Any = None  # the PromotionDecision, when tracking.promotion is on and the run finished
    pool_injections_reported: int = 0
    duration_corr: float = float("nan")  # duration vs batch membership of the last batch taken
    cpu_split: Any = None  # tasks.cpu_split.CpuSplit: the cores of the engine and of the trainer's steps


def raise_if_rollout_ended(state: RunState) -> None:
    """A failed rollout task fails the run (instead of the trainer waiting for it forever)."""
    background = state.background
    if background is not None and background.done():
        background.result()
        raise RuntimeError("the rollout task ended before training finished")


async def wait_for_batch(state: RunState, *, poll_s: float = 0.2):
    """Block (without blocking the loop) until a full batch within the staleness bound is in the store."""
    watch = DropWatch(state)
    while True:
        batch, passed_over = await asyncio.to_thread(batch_candidate, state)
        release_dropped_groups(state)
        if batch_full(state.config, batch.num_rows, passed_over):
            state.duration_corr = await asyncio.to_thread(duration_batch_correlation, state, batch)
            return batch
        raise_if_rollout_ended(state)
        watch.check()
        await asyncio.sleep(poll_s)


async def roll_out_sync_batch(state: RunState, rollout) -> None:
    """Sync mode: roll out a batch's worth of trajectories, and more while dynamic sampling passes over
    so many groups that the batch is not full yet (up to `max_dropped_batches` batches' worth)."""
    watch = DropWatch(state)
    for _ in range(state.config.curation.dynamic_sampling.max_dropped_batches + 1):
        # No more than the gate lets start: the groups kept from an earlier round still hold their
        # room, and the trainer that would free it waits for this very rollout.
        room = state.service.room(state.trainer.version)
        wanted = state.config.training.batch_size if room is None else min(state.config.training.batch_size, room)
        if wanted < 1:
            raise RuntimeError(f"sync mode: the staleness gate leaves no room at trainer version {state.trainer.version}")
        await rollout(state, wanted)
        batch, passed_over = await asyncio.to_thread(batch_candidate, state)
        release_dropped_groups(state)
        if batch_full(state.config, batch.num_rows, passed_over):
            return
        watch.check()
    raise RuntimeError(
        f"sync mode: {state.config.curation.dynamic_sampling.max_dropped_batches + 1} batches' worth of rollouts gave "
        "no full batch"
    )


async def evaluate(state: RunState) -> float:
    """Held-out success of the engine's current policy (tasks/evaluation), logged against its version."""
    from dartflow.tasks.evaluation.heldout import evaluate_heldout

    started = time.time()
    result = await evaluate_heldout(
        state.config, engine=state.engine, cluster=state.cluster, store=state.store, prompter=state.service.prompter
    )
    state.intervals.append(("evaluation", started, time.time()))
    state.eval_history.append((result.policy_version, result.success_rate))
    state.last_evaluation = result
    await asyncio.to_thread(state.tracker.log_metrics, result.metrics(), step=result.policy_version)
    return result.success_rate


# ---- Prefect: the flow and its tasks -------------------------------------------------------------
# Imported lazily (configure_prefect must set PREFECT_HOME first); built once per process.

_FLOW = None


def build_flow():
    global _FLOW
    if _FLOW is not None:
        return _FLOW
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.cache_policies import NONE
    from prefect.context import get_run_context

    @task(name="bc-warmup", task_run_name="bc-warmup", cache_policy=NONE)
    async def bc_warmup(state: RunState) -> int:
        """Behaviour cloning on demonstrations (scripted or reference actions): the policy learns the action format."""
        return await asyncio.to_thread(run_bc_warmup, state)

    @task(name="rollout", task_run_name="rollout", cache_policy=NONE)
    async def rollout(state: RunState, num_trajectories: int | None = None) -> dict[str, float]:
        """Episodes on the engine and environment cluster, streamed group by group into the store."""
        started = time.time()
        try:
            await state.service.run(num_trajectories)
        finally:
            state.intervals.append(("rollout", started, time.time()))
        return state.service.metrics()

    @task(name="train-step", task_run_name="train v{version}", cache_policy=NONE)
    async def train_step(state: RunState, version: int) -> dict[str, float]:
        """One optimizer step on a batch within the staleness bound; publishes checkpoint version+1."""
        # A batch already recorded for this version was consumed by a step whose checkpoint was lost
        # (the process died in between): train on exactly that batch again, so nothing trains twice.
        if state.store.lineage(version).num_rows:
            batch = await asyncio.to_thread(state.store.replay, version)  # pooled copies included
        else:
            batch = await wait_for_batch(state)
            if state.config.curation.experience_pool.enabled:
                batch = await asyncio.to_thread(inject_pooled_successes, state, batch)
        started = time.time()
        keep_turns, weights = trainer_side_curation(state.config, batch)
        report = await asyncio.to_thread(
            on_trainer_cores, state,
            functools.partial(state.trainer.train_step, batch, keep_turn_fraction=keep_turns, trajectory_weights=weights),
        )
        if report.skipped:
            # Weights untouched (non-finite loss/gradient): set the batch aside, give up after a few in a row.
            state.skipped_ids.update(batch["trajectory_id"].to_pylist())
            state.consecutive_skips += 1
            print(f"dartflow: step at version {version} skipped ({report.skip_reason}); batch set aside", flush=True)
            if state.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(f"{state.consecutive_skips} training steps in a row were skipped: {report.skip_reason}")
            return {**report.metrics, "train/batch_trajectories": batch.num_rows}
        state.consecutive_skips = 0
        state.store.record_consumption(report.start_version, batch)
        # After the batch: a batch recorded without its turns is replayed on resume and recorded then.
        if report.kept_turns and not state.store.step_selection(report.start_version).num_rows:
            state.store.record_step_selection(report.start_version, report.kept_turns, report.turn_entropies)
        if state.config.curation.experience_pool.enabled:
            await asyncio.to_thread(pool_successes, state, batch)
        path = await asyncio.to_thread(on_trainer_cores, state, state.trainer.save_checkpoint)
        state.intervals.append(("training", started, time.time()))
        swap_started = time.time()
        swap_s = await state.engine.update_weights(state.trainer.version, path)
        state.intervals.append(("weight swap", swap_started, time.time()))
        state.staleness += [float(x) for x in staleness_of(batch, version)]
        every = state.config.tracking.checkpoint_artifact_every
        if every and state.trainer.version % every == 0:
            await asyncio.to_thread(state.tracker.log_checkpoint, path, state.trainer.version)
        return {**report.metrics, "train/batch_trajectories": batch.num_rows, "rollout/weight_swap_s": swap_s}

    @task(name="evaluate", task_run_name="evaluate v{version}", cache_policy=NONE)
    async def evaluate_task(state: RunState, version: int) -> float:
        """Held-out success of policy `version`."""
        return await evaluate(state)

    @flow(name="dartflow-train", flow_run_name="{run_name}", log_prints=False)
    async def train_flow(config: dict, run_name: str, mode: str = "async", resume: bool = False) -> dict:
        """Train a policy with asynchronous RL (or the synchronous baseline)."""
        run_config = validate_config(config)
        flow_run_id = str(get_run_context().flow_run.id)
        state = await asyncio.to_thread(open_run, run_config, resume, flow_run_id)
        try:
            await create_markdown_artifact(
                markdown=state.tracker_link, key="mlflow-run", description="The MLflow run of this flow run"
            )
            if state.champion_start is None and bc_unfinished(state.trainer, run_config.training.bc_steps):
                await bc_warmup(state)
            await start_modules(state)
            summary = await train_loop(state, mode, rollout, train_step, evaluate_task)
            await create_table_artifact(table=summary_table(state, summary), key="run-summary", description="Run summary")
            return summary
        finally:
            await close_run(state)

    _FLOW = train_flow
    return _FLOW


# ---- the flow body's steps (plain functions: the tasks above call them) ----------------------------


def staleness_of(batch, trainer_version: int) -> list[int]:
    """Staleness of the batch's rollouts (pooled successes are old on purpose: the bound is for rollouts)."""
    sources = batch["source"].to_pylist() if "source" in batch.column_names else ["rollout"] * batch.num_rows
    return [trainer_version - v for v, s in zip(batch["min_policy_version"].to_pylist(), sources) if s != "pool"]


def open_run(config: RunConfig, resume: bool, flow_run_id: str) -> RunState:
    """Stores, tracker, and a trainer: fresh from the base policy, or resumed from the latest checkpoint."""
    import json

    from dartflow.flows.promotion import fetch_champion
    from dartflow.flows.stores import open_trajectory_store
    from dartflow.storage.tracking import RunTracker, run_link_markdown
    from dartflow.tasks.cpu_split import split_for_run
    from dartflow.tasks.models.prepare import ensure_policy_model
    from dartflow.tasks.training.checkpoints import latest_checkpoint
    from dartflow.tasks.training.settings import TrainerSettings
    from dartflow.tasks.training.trainer import Trainer

    run_dir = config.work_dir / "runs" / config.run_name
    checkpoint_root = run_dir / "checkpoints"
    run_file = run_dir / "run.json"
    state = RunState(config=config, run_dir=run_dir)
    # Before anything is written: cores this machine does not have fail the run here.
    state.cpu_split = split_for_run(config.cpu.engine_cpus, config.cpu.trainer_cpus)
    has_checkpoint = latest_checkpoint(checkpoint_root) is not None
    if resume and not has_checkpoint:
        raise FileNotFoundError(f"--resume: run '{config.run_name}' has no checkpoint under {checkpoint_root}")
    if not resume and (has_checkpoint or run_file.exists()):
        raise FileExistsError(
            f"run '{config.run_name}' already exists in {run_dir}: pass --resume to continue it, "
            "or choose another run_name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    tags = {"prefect.flow_run_id": flow_run_id, "dartflow.run_name": config.run_name}
    if resume:
        saved = json.loads(run_file.read_text())
        state.tracker = RunTracker.resume(config.mlflow_uri, saved["mlflow_run_id"], tags=tags)
        state.trainer = Trainer.resume(checkpoint_root, settings=TrainerSettings.from_run_config(config))
        state.champion_start = saved.get("champion_start")
    else:
        champion = fetch_champion(config) if config.tracking.start_from_champion else None
        if champion is not None:
            model_dir, state.champion_start = champion
            tags["dartflow.start_model"] = f"{config.tracking.model_name} champion v{state.champion_start}"
            print(f"starting from the champion: {tags['dartflow.start_model']} (BC warm-up skipped)", flush=True)
        else:
            model_dir, _ = ensure_policy_model(config.model, config.model_dir)
            tags["dartflow.start_model"] = f"configured model ({config.model.source})"
        state.tracker = RunTracker(config.mlflow_uri, config.tracking.experiment, config.run_name, tags=tags)
        state.tracker.log_config(config.model_dump(mode="json"))
        run_file.write_text(json.dumps({
            "mlflow_run_id": state.tracker.run_id, "first_flow_run_id": flow_run_id, "champion_start": state.champion_start,
        }))
        state.trainer = Trainer(model_dir, checkpoint_root=checkpoint_root, settings=TrainerSettings.from_run_config(config))
        state.trainer.save_checkpoint(mark=True, reason="base policy")
    state.store = open_trajectory_store(config, run_id=config.run_name)
    state.rl_done = state.trainer.rl_steps
    state.tracker_link = run_link_markdown(state.tracker.run_id, state.tracker.run_url())
    return state


def bc_unfinished(trainer, bc_steps: int) -> bool:
    """Whether the BC warm-up is still to run: a fresh run, or one resumed from a checkpoint taken
    before BC ended (BC checkpoints once, at its end, so such a resume redoes BC from the start)."""
    return trainer.rl_steps == 0 and trainer.bc_steps < bc_steps


def run_bc_warmup(state: RunState) -> int:
    """Demonstrations into the store (once per run: a redone warm-up reuses them), then
    `bc_steps` supervised steps on them. Stops early, without a checkpoint, when the run is stopped."""
    from dartflow.flows import interrupts
    import random

    from dartflow.tasks.rollout.demonstrations import warmup_demonstrations
    from dartflow.tasks.rollout.prompts import ChatPrompter, system_prompt_from

    config, trainer = state.config, state.trainer
    prompter = ChatPrompter(trainer.tokenizer, system_prompt=system_prompt_from(config.rollout.system_prompt))
    environments = [(spec.name, spec.params) for spec in config.environments]
    run_demonstrations = f"run_id = '{config.run_name}' AND source = 'demonstration'"
    demonstrations = state.store.as_of(state.store.version, where=run_demonstrations)
    if not demonstrations.num_rows:
        played = warmup_demonstrations(
            environments, prompter, config.training.bc_demonstrations, seed=config.seed,
            max_turns=config.training.bc_max_turns or config.rollout.max_turns, run_id=config.run_name,
        )
        print(played.summary(), flush=True)
        state.store.append(played.records)
        # The rows as stored: BC trains on what the store holds.
        demonstrations = state.store.as_of(state.store.version, where=run_demonstrations)
    rng = random.Random(config.seed)
    started = time.time()
    for _ in range(config.training.bc_steps - trainer.bc_steps):  # the rest, when bc_steps was raised on resume
        if interrupts.requested():
            print(f"bc warm-up: stopped at step {trainer.bc_steps}/{config.training.bc_steps}; --resume redoes it", flush=True)
            return trainer.version
        rows = sorted(rng.sample(range(demonstrations.num_rows), min(config.training.batch_size, demonstrations.num_rows)))
        report = trainer.bc_step(demonstrations.take(rows))
        state.tracker.log_metrics({k.replace("train/", "bc/"): v for k, v in report.metrics.items()}, step=trainer.version)
        if report.metrics and (trainer.bc_steps % 10 == 0 or trainer.bc_steps == config.training.bc_steps):
            loss = report.metrics.get("train/bc_loss", float("nan"))
            print(f"bc warm-up: step {trainer.bc_steps}/{config.training.bc_steps}, loss {loss:.3f}", flush=True)
    state.intervals.append(("bc warm-up", started, time.time()))
    trainer.save_checkpoint(mark=True, reason="after behaviour cloning")
    print(f"bc warm-up: {config.training.bc_steps} steps on {demonstrations.num_rows} demonstrations -> version {trainer.version}")
    return trainer.version


def on_trainer_cores(state: RunState, work):
    """Run `work()` in this thread pinned to the trainer's cores (all cores when the split pins none)."""
    from dartflow.tasks.cpu_split import pinned

    with pinned(state.cpu_split.trainer_cpus if state.cpu_split is not None else None):
        return work()


async def start_modules(state: RunState) -> None:
    """The engine on the latest checkpoint, the environment cluster, the rollout service."""
    from dartflow.tasks.envs.cluster import EnvironmentCluster
    from dartflow.tasks.rollout.engine import RolloutEngine
    from dartflow.tasks.rollout.service import RolloutService
    from dartflow.tasks.training.checkpoints import latest_checkpoint

    config, trainer = state.config, state.trainer
    checkpoint = latest_checkpoint(trainer.checkpoint_root)
    print(f"starting the rollout engine on {checkpoint} and {config.cluster.num_workers} environment workers "
          f"({state.cpu_split.describe()})")
    state.engine = RolloutEngine.from_config(
        config, model_dir=checkpoint, policy_version=trainer.version, cpu_ids=state.cpu_split.engine_cpus
    )
    state.cluster = EnvironmentCluster.from_config(config)
    await asyncio.gather(state.engine.start(), state.cluster.start())
    state.sampler = curated_sampler(state)
    rules = config.curation.experience_pool
    if rules.enabled and rules.seed_with_demonstrations and trainer.rl_steps == 0:
        await asyncio.to_thread(seed_pool_with_demonstrations, state)
    state.service = RolloutService.from_config(
        config, engine=state.engine, cluster=state.cluster, store=state.store,
        trainer_version=lambda: state.trainer.version,
        already_produced=trainer.version * config.training.batch_size,
        sampler=state.sampler,
    )


async def train_loop(state: RunState, mode: str, rollout, train_step, evaluate_task) -> dict:
    from dartflow.flows.progress import TrainProgress

    config, trainer = state.config, state.trainer
    target = config.training.steps  # total RL steps of the run: a resumed run continues to the same end
    progress = TrainProgress(target, trainer.rl_steps, started=state.started)
    state.progress = progress
    first_version, first_eval = trainer.version, await evaluate_task(state, trainer.version)
    progress.evaluated(trainer.version, first_eval)
    background = asyncio.create_task(rollout(state)) if mode == "async" and trainer.rl_steps < target else None
    state.background = background
    try:
        while trainer.rl_steps < target:
            raise_if_rollout_ended(state)
            if mode == "sync":
                await roll_out_sync_batch(state, rollout)
            metrics = await train_step(state, trainer.version)
            metrics.update(state.service.metrics())
            metrics.update(curation_metrics(state))
            metrics.update(state.cluster.stats().to_metrics())
            await asyncio.to_thread(state.tracker.log_metrics, metrics, step=trainer.version)
            state.reward_history.append((trainer.version, metrics.get("train/reward_mean", 0.0)))
            every = config.evaluation.every_versions
            if every and trainer.rl_steps % every == 0 and trainer.rl_steps < target:
                progress.evaluated(trainer.version, await evaluate_task(state, trainer.version))
            progress.step(trainer.version, trainer.rl_steps, metrics)
    finally:
        progress.close()
        if background is not None:
            state.service.stop()
            await asyncio.gather(background, return_exceptions=True)
    # Nothing trained (training.steps reached, or 0: an evaluation-only run): the same policy, the same number.
    last_eval = first_eval if trainer.version == first_version else await evaluate_task(state, trainer.version)
    if config.tracking.promotion.enabled:
        from dartflow.flows.promotion import compare_with_champion

        state.promotion = await compare_with_champion(state)
    print(f"held-out success at version {trainer.version}: {last_eval:.3f} (was {first_eval:.3f})")
    return {
        "final_version": trainer.version, "heldout_before": first_eval, "heldout_after": last_eval,
        "mlflow_run_id": state.tracker.run_id,
    }


def summary_table(state: RunState, summary: dict) -> list[dict[str, str]]:
    from dartflow.storage.tracking import summary_rows

    return summary_rows(state.tracker.latest_metrics(), summary)


INTERRUPT_WAIT_S = 300.0  # longest wait for a training step cut off by an interrupt
ENGINE_STOP_S = 6.0  # after an interrupt: vLLM's shutdown gives its engine core 5 s, then we kill what is left


async def close_run(state: RunState) -> None:
    """Stop modules and end the MLflow run: FINISHED with plots, a final checkpoint and the registered
    policy; after Ctrl-C/SIGTERM/a Prefect cancellation (KILLED) or a failure (FAILED) with the latest
    checkpoint matching the store's lineage and nothing registered. Safe after any failure; runs in the
    flow body's `finally`, whose exception (if any) tells how the run ends."""
    import sys

    from dartflow.flows import interrupts

    error = sys.exc_info()[1]
    stopped = interrupts.requested()
    if stopped is None and isinstance(error, asyncio.CancelledError):
        stopped = "cancelled"
    interrupts.begin_closing()
    settled = True
    if stopped or error is not None:
        # A training step cut off by the cancellation goes on in its thread: let it end first.
        settled = await interrupts.wait_for_threads(INTERRUPT_WAIT_S)
    for closer in (getattr(state.service, "close", None),):
        if closer is not None:
            closer()
    if state.cluster is not None:
        await state.cluster.close()
    if state.engine is not None:
        # On Ctrl-C the engine's processes got the signal too; one may hang in vLLM's own shutdown.
        await (state.engine.shutdown(timeout_s=ENGINE_STOP_S) if stopped else state.engine.shutdown())
    if state.tracker is None:
        return
    if stopped or error is not None:
        how = f"stopped ({stopped})" if stopped else "failed"
        if settled and state.trainer is not None:
            version = await asyncio.to_thread(keep_consistent_checkpoint, state)
            print(f"dartflow: run '{state.config.run_name}' {how}; latest checkpoint: version {version}", flush=True)
        else:
            print(f"dartflow: a training step did not end within {INTERRUPT_WAIT_S:.0f} s: no checkpoint written now")
        state.tracker.set_tags({"dartflow.end": how})
        state.tracker.end("KILLED" if stopped else "FAILED")
        return
    failed = False
    try:
        registered = await asyncio.to_thread(finish_tracking, state)
        if state.promotion is not None:
            from prefect.artifacts import create_markdown_artifact

            from dartflow.flows.promotion import promotion_markdown

            await create_markdown_artifact(
                markdown=promotion_markdown(state, registered), key="promotion", description="The promotion decision"
            )
    except Exception as exc:  # the run's data is safe in the stores; say what failed
        failed = True
        print(f"dartflow: logging the final plots/policy failed: {exc}")
    state.tracker.end("FINISHED" if not failed else "FAILED")


def keep_consistent_checkpoint(state: RunState) -> int | None:
    """Checkpoint the trainer's version if the store recorded the batch of the step that made it;
    otherwise keep the latest checkpoint (the step's batch is still unconsumed and trains after
    --resume, once). Returns the latest checkpoint's version."""
    from dartflow.tasks.training.checkpoints import list_checkpoints

    trainer = state.trainer
    saved = list_checkpoints(trainer.checkpoint_root)
    latest = saved[-1][0] if saved else None
    if trainer.version != latest and state.store is not None and state.store.lineage(trainer.version - 1).num_rows:
        trainer.save_checkpoint()
        return trainer.version
    return latest


def finish_tracking(state: RunState) -> int:
    """Plots, the final checkpoint, the registered policy (and the promotion rule); returns its registry version."""
    from dartflow.storage.plots import reward_success_figure, staleness_histogram_figure, timeline_figure

    config, tracker, trainer = state.config, state.tracker, state.trainer
    if state.reward_history:
        versions, rewards = zip(*state.reward_history)
        evals = list(zip(*state.eval_history)) if state.eval_history else [[], []]
        tracker.log_figure(reward_success_figure(versions, rewards, eval_versions=evals[0], success=evals[1]), "reward_success.png")
        tracker.log_figure(staleness_histogram_figure(state.staleness, max_staleness=config.rollout.max_staleness), "staleness.png")
    if state.intervals:
        tracker.log_figure(timeline_figure(state.intervals), "timeline.png")
    if state.sampler is not None:
        log_curation_plan(state)
    path = trainer.save_checkpoint(mark=True, reason="final")
    tracker.log_checkpoint(path, trainer.version)
    version = tracker.log_policy_and_register(path, config.tracking.model_name, alias="candidate")
    print(f"registered {config.tracking.model_name} version {version} (alias candidate) in MLflow")
    if state.promotion is not None:
        from dartflow.flows.promotion import apply_promotion

        apply_promotion(state, version)
    return version


def run_train(config: RunConfig, *, mode: str = "async", resume: bool = False) -> dict:
    """Entry point of `dartflow train`: runs the Prefect flow in this process. Ctrl-C, SIGTERM or a
    cancellation in Prefect stop it cleanly and raise `interrupts.RunInterrupted` (flows/interrupts.py)."""
    if mode not in ("async", "sync"):
        raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
    if mode == "sync":
        config = config.model_copy(update={"rollout": config.rollout.model_copy(update={"max_staleness": 0})})
    from dartflow.flows import interrupts

    configure_prefect(config)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    train_flow = build_flow().with_options(on_running=[interrupts.watch_prefect_cancellation])
    interrupts.start_prefect_api()
    try:
        return interrupts.run_interruptibly(
            lambda: train_flow(config=config.model_dump(mode="json"), run_name=config.run_name, mode=mode, resume=resume)
        )
    except interrupts.RunInterrupted as stopped:  # Ctrl-C, SIGTERM, a Prefect cancellation: say where it stands
        from dartflow.tasks.training.checkpoints import list_checkpoints

        saved = list_checkpoints(config.work_dir / "runs" / config.run_name / "checkpoints")
        stopped.version, stopped.run_name = (saved[-1][0] if saved else None), config.run_name
        raise
