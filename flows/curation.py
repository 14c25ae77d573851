"""The data manager's side of the train flow: what the trainer takes from the store and what it
records back (tasks/curation holds the rules; this wires them to the run's store and services).

- batches: whole groups within the staleness bound, groups of equal rewards dropped under dynamic
  sampling (and released to the staleness gate), `batch_full` for varied group sizes;
- the experience pool: hard problems measured from the store, pooled successes injected into
  success-less groups, successes of trained batches pooled, the warm-up's demonstrations seeded;
- trainer-side rules: high-entropy step selection and duration weights for a batch;
- what a person reads: curation metrics per step, the per-problem table and plot at the end.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dartflow.config import RunConfig
from dartflow.storage.selection import sql_string
from dartflow.tasks.curation.groups import training_groups

if TYPE_CHECKING:
    from dartflow.flows.train import RunState

TRAIN_WHERE = "split = 'train' AND source = 'rollout'"


def batch_candidate(state: RunState):
    """(the batch the trainer would take now, sizes of the groups it passed over for lack of room):
    whole groups within the staleness bound (groups of equal rewards passed over under dynamic
    sampling); it is full enough when `batch_full` says so."""
    config, trainer = state.config, state.trainer
    dynamic = config.curation.dynamic_sampling
    passed_over: list[int] = []
    # Pooled successes are injected into exactly the groups this selection kept for them.
    state.batch_poolable = frozenset(poolable_problems(state)) if dynamic.enabled else frozenset()
    batch = state.store.next_batch(
        trainer.version,
        config.rollout.max_staleness,
        config.training.batch_size,
        where=TRAIN_WHERE if not state.skipped_ids else
        f"{TRAIN_WHERE} AND trajectory_id NOT IN ({', '.join(repr(i) for i in sorted(state.skipped_ids))})",
        select=training_groups(
            config.training.batch_size, drop_equal_rewards=dynamic.enabled,
            reward_tolerance=dynamic.reward_tolerance, dropped_groups=state.dropped_groups,
            poolable_problems=state.batch_poolable,
            passed_over=passed_over,
        ),
    )
    return batch, passed_over


def batch_full(config: RunConfig, rows: int, passed_over: list[int]) -> bool:
    """Whole groups may leave rows of the batch empty: it is full when not even the smallest group
    could still fit, or when a waiting group was passed over because it did not fit (the batch
    cannot grow until it trains; most of it filled)."""
    size = config.training.batch_size
    budget = config.curation.rollout_budget
    smallest = budget.min_group_size if budget.enabled else config.rollout.group_size
    if rows >= max(size - smallest + 1, 1):
        return True
    return bool(passed_over) and rows >= max(size - config.largest_group() + 1, 1)


def release_dropped_groups(state: RunState) -> None:
    """Groups dynamic sampling passed over are never trained: free their room in the staleness gate
    (otherwise they hold it while the trainer waits for informative groups: a deadlock at k = 0)."""
    new = list(state.dropped_groups)[state.dropped_released:]
    state.dropped_released = len(state.dropped_groups)
    if new and state.service is not None:
        state.service.release([i for group in new for i in state.dropped_groups[group]], "equal rewards (dynamic sampling)")


def dropped_trajectories(state: RunState) -> int:
    """Trajectories dynamic sampling has dropped so far in this process."""
    return sum(len(ids) for ids in state.dropped_groups.values())


DROP_REPORT_EVERY_S = 30.0  # how often a trainer waiting on dynamic sampling says so


class DropWatch:
    """While the trainer waits for one batch: says how many groups dynamic sampling dropped, and
    stops the run when it dropped `max_dropped_batches` batches' worth (the policy's rewards do not
    vary on what it is given: waiting longer only burns compute)."""

    def __init__(self, state: RunState):
        self.state, self.since = state, dropped_trajectories(state)
        self.groups_since, self.reported_at = len(state.dropped_groups), time.monotonic()

    def check(self) -> None:
        state = self.state
        dynamic = state.config.curation.dynamic_sampling
        if not dynamic.enabled:
            return
        dropped = dropped_trajectories(state) - self.since
        limit = dynamic.max_dropped_batches * state.config.training.batch_size
        if dropped >= limit:
            raise RuntimeError(
                f"dynamic sampling dropped {dropped} trajectories (all rewards of each group equal) while the trainer "
                f"waited for the batch of version {state.trainer.version} "
                f"(curation.dynamic_sampling.max_dropped_batches = {dynamic.max_dropped_batches}): the policy succeeds "
                "on all or none of the attempts of every problem it is given; make the problems' difficulty match the "
                "policy (e.g. the experience pool, easier problems, larger groups) or turn dynamic sampling off"
            )
        if time.monotonic() - self.reported_at >= DROP_REPORT_EVERY_S and dropped:
            self.reported_at = time.monotonic()
            message = (
                f"dynamic sampling: {len(state.dropped_groups) - self.groups_since} groups ({dropped} trajectories) "
                f"dropped while waiting for the batch of version {state.trainer.version}"
            )
            (state.progress.message if state.progress is not None else print)(message)


def trainer_side_curation(config: RunConfig, batch):
    """The step's curation arguments: the fraction of turns to keep (high-entropy step selection)
    and per-trajectory weights (duration relative to the group), each None when its rule is off."""
    import numpy as np

    from dartflow.tasks.curation.selection import duration_weights

    rules = config.curation
    keep = rules.step_selection.keep_fraction if rules.step_selection.enabled else None
    weights = None
    if rules.duration.mode == "weight":
        # Pooled rows (a demonstration has no duration at all) weigh 1: the weighting is about rollouts.
        pooled = [s == "pool" for s in batch["source"].to_pylist()]
        rollouts = [i for i, p in enumerate(pooled) if not p]
        seconds = episode_seconds(batch)
        weights = np.ones(batch.num_rows)
        if rollouts:
            weights[rollouts] = duration_weights(
                [batch["group_id"][i].as_py() for i in rollouts], [seconds[i] for i in rollouts]
            )
    return keep, weights


def episode_seconds(rows) -> list[float]:
    """Each trajectory's duration: its generation plus its environment time."""
    return [g + e for g, e in zip(rows["generation_seconds"].to_pylist(), rows["environment_seconds"].to_pylist())]


def duration_batch_correlation(state: RunState, batch) -> float:
    """Correlation between an admissible trajectory's duration and its being in the batch taken
    (fast episodes reaching the trainer first shows as a negative value)."""
    from dartflow.tasks.curation.selection import duration_membership_correlation

    candidates = state.store.admissible(state.trainer.version, state.config.rollout.max_staleness, where=TRAIN_WHERE)
    taken = set(batch["trajectory_id"].to_pylist())
    in_batch = [i in taken for i in candidates["trajectory_id"].to_pylist()]
    return duration_membership_correlation(episode_seconds(candidates), in_batch)


def hard_problems(state: RunState) -> frozenset[tuple[str, str]]:
    """(environment, problem_id) of the problems whose estimated difficulty reaches the pool's
    threshold, from this run's train rollouts so far (problems never tried are not hard yet).
    Measured again only when the trainer's version or the store moved (it scans the run's rollouts)."""
    key = (state.trainer.version, state.store.version)
    if state.hard[0] != key:
        state.hard = (key, measure_hard_problems(state))
    return state.hard[1]


def measure_hard_problems(state: RunState) -> frozenset[tuple[str, str]]:
    from dartflow.storage.stats import problem_stats
    from dartflow.tasks.curation.difficulty import counted_attempts, estimate_difficulty
    from dartflow.tasks.curation.sampler import ATTEMPT_COLUMNS

    rules, store = state.config.curation, state.store
    rows = store.as_of(store.version, where=this_runs_training(state.config), columns=list(ATTEMPT_COLUMNS))
    attempts = counted_attempts(rows, current_version=state.trainer.version, recent_versions=rules.difficulty.recent_versions)
    frame = estimate_difficulty(
        problem_stats(attempts), prior_alpha=rules.difficulty.prior_alpha, prior_beta=rules.difficulty.prior_beta
    )
    hard = frame.filter(frame["difficulty"] >= rules.experience_pool.hard_threshold)
    return frozenset(zip(hard["environment"].to_list(), hard["problem_id"].to_list()))


def this_runs_training(config: RunConfig) -> str:
    """SQL: this run's train rollouts (what difficulty is measured on)."""
    return f"{TRAIN_WHERE} AND run_id = {sql_string(config.run_name)}"


def poolable_problems(state: RunState) -> set[tuple[str, str]]:
    """Hard problems with pool members (a success-less group of one gets a pooled success); empty
    unless the pool is on. Computed again when the trainer's version or the store moved (the pool
    only grows after a step, or before RL)."""
    if not state.config.curation.experience_pool.enabled:
        return set()
    key = (state.trainer.version, state.store.version)
    if state.poolable[0] != key:
        members = state.store.pool_members(columns=["environment", "problem_id"])
        pooled = set(zip(members["environment"].to_pylist(), members["problem_id"].to_pylist()))
        state.poolable = (key, frozenset(hard_problems(state) & pooled))
    return state.poolable[1]


def inject_pooled_successes(state: RunState, batch):
    """Experience pool: each group of a hard problem without a success gets one pooled success of
    its problem (stored as a `source = "pool"` row of the group, with its own behaviour log-probs)."""
    import pyarrow as pa

    from dartflow.tasks.curation.pool import plan_injections

    # Under dynamic sampling: the set it kept success-less groups for, so each of them gets its success.
    dynamic = state.config.curation.dynamic_sampling.enabled
    plan = plan_injections(batch, state.store.pool_members(), state.batch_poolable if dynamic else poolable_problems(state))
    injected = [state.store.inject_pooled(member, group_id) for group_id, member in plan]
    state.pool_injections += len(injected)
    if not injected:
        return batch
    return pa.concat_tables([batch, *(row.select(batch.column_names) for row in injected)])


def pool_successes(state: RunState, batch) -> None:
    """Successes of hard problems in a trained batch join the pool (capped per problem)."""
    from dartflow.tasks.curation.pool import pool_candidates

    cap = state.config.curation.experience_pool.capacity_per_problem
    state.store.pool_add(pool_candidates(batch, hard_problems(state)), cap)


def seed_pool_with_demonstrations(state: RunState) -> None:
    """The run's successful demonstrations join the pool before RL: a problem the policy
    never solves can still get a success into its groups."""
    from dartflow.tasks.curation.pool import pool_candidates

    rules = state.config.curation.experience_pool
    where = f"run_id = {sql_string(state.config.run_name)} AND source = 'demonstration'"
    demonstrations = state.store.as_of(state.store.version, where=where)
    if demonstrations.num_rows:
        every_problem = set(zip(demonstrations["environment"].to_pylist(), demonstrations["problem_id"].to_pylist()))
        added = state.store.pool_add(
            pool_candidates(demonstrations, every_problem, sources=("demonstration",)), rules.capacity_per_problem
        )
        print(f"experience pool: {added} successful demonstrations added", flush=True)


def curation_metrics(state: RunState) -> dict[str, float]:
    """The data manager's decisions since the last step: the sampler's latest round, groups dropped."""
    metrics = dict(state.sampler.round_metrics) if state.sampler is not None else {}
    if state.duration_corr == state.duration_corr:  # not NaN
        metrics["curation/duration_batch_corr"] = state.duration_corr
    if state.config.curation.experience_pool.enabled:
        metrics["curation/pool_injections"] = float(state.pool_injections - state.pool_injections_reported)
        metrics["curation/pool_members"] = float(state.store.pool_count())
        state.pool_injections_reported = state.pool_injections
    if state.config.curation.dynamic_sampling.enabled:
        dropped = len(state.dropped_groups)
        metrics["curation/groups_dropped"] = float(dropped - state.dropped_reported)
        metrics["curation/groups_dropped_total"] = float(dropped)
        state.dropped_reported = dropped
    return metrics


def curated_sampler(state: RunState):
    """The curated sampler reading this run's attempts from the store, or None (uniform sampling)
    when no sampler-side rule is on."""
    from dartflow.tasks.curation.sampler import ATTEMPT_COLUMNS, CuratedSampler, sampler_rules_on
    from dartflow.tasks.rollout.sampler import UniformSampler

    config = state.config
    if not sampler_rules_on(config.curation):
        return None
    store = state.store

    this_run = this_runs_training(config)

    def read_attempts():
        return store.as_of(store.version, where=this_run, columns=list(ATTEMPT_COLUMNS))

    return CuratedSampler(
        UniformSampler.from_config(config), config.curation, max_turns=config.rollout.max_turns,
        read_attempts=read_attempts, policy_version=lambda: state.trainer.version,
    )


def log_curation_plan(state: RunState) -> None:
    """The per-problem table of the curated sampler's latest plans (parquet) and its success-by-bucket plot."""
    from dartflow.storage.plots import success_by_bucket_figure
    from dartflow.tasks.curation.difficulty import BUCKETS

    table = state.sampler.problem_table()
    state.tracker.log_table(table, "curation/problems.parquet")
    if table.num_rows:
        figure = success_by_bucket_figure(
            table["bucket"].to_pylist(), table["successes"].to_pylist(), table["attempts"].to_pylist(), order=BUCKETS
        )
        state.tracker.log_figure(figure, "success_by_bucket.png")


