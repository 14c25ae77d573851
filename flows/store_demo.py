"""The trajectory-store demo that `dartflow quickstart` runs until the train flow exists.

Several writer processes play a toy number-guessing game with the policy model (sampled with
transformers, real token ids and behaviour log-probs) and append each group of trajectories to the
LanceDB store as soon as it ends; meanwhile the main process takes training batches within the
staleness bound and records their lineage, as the trainer will. Nothing is trained yet: all rows
carry policy version 0, so once the trainer version passes the staleness bound the remaining rows
are (correctly) refused as too stale.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from dartflow.config import RunConfig

_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class WriterJob:
    model_dir: str
    config: RunConfig
    run_id: str
    writer_index: int
    num_groups: int
    group_size: int
    max_turns: int
    max_new_tokens: int
    temperature: float
    high: int
    seed: int


def guess_feedback(action_text: str, hidden: int) -> tuple[str, bool]:
    """The toy game's answer to one guess: (observation, solved)."""
    match = _NUMBER.search(action_text)
    if match is None:
        return "No number found in your answer. Answer with a single number.", False
    guess = int(match.group())
    if guess == hidden:
        return "correct", True
    return ("higher" if guess < hidden else "lower"), False


def write_groups(job: WriterJob, progress: "mp.Queue[int]") -> None:
    """Writer process: play `num_groups` groups and append each one to the store when it ends."""
    import torch
    from transformers import AutoTokenizer

    from dartflow.flows.stores import open_trajectory_store
    from dartflow.storage.records import TrajectoryRecord, TurnRecord
    from dartflow.tasks.models.agreement import load_transformers_policy
    from dartflow.tasks.models.sampling import sample_response

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
    model = load_transformers_policy(job.model_dir)
    store = open_trajectory_store(job.config, job.run_id, compacts=False)
    rng = random.Random(job.seed)
    generator = torch.Generator().manual_seed(job.seed)
    for group_number in range(job.num_groups):
        hidden = rng.randint(1, job.high)
        problem_id = f"toy_guess:{hidden}"
        group_id = uuid.uuid4().hex
        records = []
        for _ in range(job.group_size):
            messages = [{"role": "user", "content": f"Guess the number between 1 and {job.high}."}]
            turns, solved = [], False
            while len(turns) < job.max_turns and not solved:
                prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                if not isinstance(prompt_ids, list):  # transformers 5 returns a BatchEncoding
                    prompt_ids = prompt_ids["input_ids"]
                started = time.perf_counter()
                sampled = sample_response(
                    model,
                    prompt_ids,
                    max_new_tokens=job.max_new_tokens,
                    stop_token_ids=[tokenizer.eos_token_id],
                    temperature=job.temperature,
                    generator=generator,
                )
                generation_seconds = time.perf_counter() - started
                action = tokenizer.decode(sampled.token_ids, skip_special_tokens=True)
                started = time.perf_counter()
                observation, solved = guess_feedback(action, hidden)
                turns.append(
                    TurnRecord(
                        observation=messages[-1]["content"],
                        action=action,
                        prompt_token_ids=prompt_ids,
                        response_token_ids=sampled.token_ids,
                        behavior_logprobs=sampled.behavior_logprobs,
                        min_policy_version=0,
                        reward=1.0 if solved else 0.0,
                        generation_seconds=generation_seconds,
                        environment_seconds=time.perf_counter() - started,
                    )
                )
                messages += [{"role": "assistant", "content": action}, {"role": "user", "content": observation}]
            records.append(
                TrajectoryRecord(
                    problem_id=problem_id,
                    group_id=group_id,
                    environment="toy_guess",
                    turns=turns,
                    finish_reason="done" if solved else "truncated",
                    success=solved,
                    metadata={"writer": job.writer_index, "group_number": group_number},
                )
            )
        store.append(records)
        progress.put(len(records))


def run_store_demo(config: RunConfig, model_dir: Path, *, writers: int = 2, groups_per_writer: int = 8) -> dict:
    """Write trajectories from `writers` processes while consuming batches; return a summary."""
    from dartflow.flows.stores import open_trajectory_store

    run_id = f"{config.run_name}-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    store = open_trajectory_store(config, run_id)
    expected = writers * groups_per_writer * config.rollout.group_size
    print(f"store demo: run {run_id}, {writers} writer processes, {expected} trajectories -> {config.store_uri}")

    context = mp.get_context("spawn")
    progress: mp.Queue = context.Queue()
    processes = [
        context.Process(
            target=write_groups,
            args=(
                WriterJob(
                    model_dir=str(model_dir),
                    config=config,
                    run_id=run_id,
                    writer_index=index,
                    num_groups=groups_per_writer,
                    group_size=config.rollout.group_size,
                    max_turns=config.rollout.max_turns,
                    max_new_tokens=config.rollout.max_new_tokens,
                    temperature=config.rollout.temperature or 1.0,
                    high=16,
                    seed=config.seed * 1000 + index,
                ),
                progress,
            ),
            name=f"dartflow-demo-writer-{index}",
        )
        for index in range(writers)
    ]
    for process in processes:
        process.start()

    written, trainer_version, batches = 0, 0, []
    try:
        while True:
            try:
                written += progress.get(timeout=0.5)
                print(f"  written {written}/{expected} trajectories", flush=True)
            except queue.Empty:
                pass
            # The trainer's side: take a full batch as soon as one is admissible, record its lineage.
            batch = store.next_batch(
                trainer_version, config.rollout.max_staleness, config.training.batch_size,
                columns=["problem_id", "reward", "min_policy_version"],
            )
            if batch.num_rows == config.training.batch_size:
                store.record_consumption(trainer_version, batch)
                batches.append(batch.num_rows)
                print(
                    f"  trainer version {trainer_version}: batch of {batch.num_rows} recorded in lineage "
                    f"(it would train version {trainer_version + 1})",
                    flush=True,
                )
                trainer_version += 1
            if all(not p.is_alive() for p in processes) and progress.empty():
                break
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"writer processes failed: {failed} (see their traceback above)")

    too_stale = store.count(f"run_id = '{run_id}'") - sum(batches)
    stats = store.problem_stats(run_id=run_id)
    print(f"store demo: {written} trajectories written, {len(batches)} batches consumed, "
          f"{too_stale} left unconsumed (staleness > {config.rollout.max_staleness} at trainer version {trainer_version})")
    import polars as pl

    with pl.Config(tbl_rows=40, tbl_width_chars=120, fmt_str_lengths=30):
        print(stats.drop("last_seen_at").sort("problem_id"))
    if batches:
        replayed = store.replay(0, columns=["problem_id", "reward"])
        print(f"lineage: the step at version 0 consumed {replayed.num_rows} trajectories, e.g. {replayed['trajectory_id'][0]}")
    return {"run_id": run_id, "written": written, "batches": batches, "too_stale": too_stale}
