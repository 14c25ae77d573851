"""The trainer the flow drives: batches in, policy versions and checkpoints out.

    settings = TrainerSettings.from_run_config(config)  # training section + the rollout's temperature
    trainer = Trainer(model_dir, checkpoint_root=checkpoint_root, settings=settings)
    trainer.save_checkpoint()                     # v000000: the untied folder engines start from
    batch = store.next_batch(trainer.version, max_staleness, batch_size)
    report = trainer.train_step(batch)            # version += 1 unless report.skipped
    # curation (issue 7): train only the top 30% of turns by entropy, weight trajectories by duration
    report = trainer.train_step(batch, keep_turn_fraction=0.3, trajectory_weights=duration_weights(...))
    store.record_consumption(report.start_version, batch)
    path = trainer.save_checkpoint()              # publish to the rollout engines
    ...
    trainer = Trainer.resume(checkpoint_root)     # after a crash: continues exactly

No I/O happens inside a step; checkpoints are written only by `save_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from transformers import AutoTokenizer

from dartflow.tasks.training import checkpoints, lora
from dartflow.tasks.training.advantages import group_index, turn_advantages, zero_signal_group_fraction
from dartflow.tasks.training.batching import (
    MicroBatch, build_micro_batches, check_trajectory_weights, rollout_staleness, whole_transcript,
)
from dartflow.tasks.training.bc import behaviour_cloning_step
from dartflow.tasks.training.logprobs import head_matches_forward
from dartflow.tasks.training.schedule import learning_rate
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.step import (
    StepOutcome, policy_gradient_step, proximal_logprobs, proximal_logprobs_and_entropy,
)
from dartflow.tasks.training.turns import select_turns, turn_counts, turn_mean_entropies

METRIC_PREFIX = "train/"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    metrics: dict[str, float]  # all names start with "train/"
    version: int  # policy version after the step (== start_version if skipped)
    start_version: int  # version the batch trained: what TrajectoryStore.record_consumption takes
    skipped: bool
    skip_reason: str | None = None
    # High-entropy step selection (train_step's keep_turn_fraction); both empty when it is off.
    kept_turns: dict[str, list[int]] = field(default_factory=dict)  # trajectory_id -> trained turns (0-based)
    # trajectory_id -> mean token entropy of each turn under the start-of-step policy (NaN: no agent token)
    turn_entropies: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnSelection:
    """Which turns of a batch train: the micro-batches restricted to them, and what to report."""

    micro_batches: list[MicroBatch]  # only the kept turns' tokens in the masks; micro-batches left empty dropped
    proximal: list[torch.Tensor]  # the start-of-step log-probs of those tokens, one (N_i,) per micro-batch
    kept_turns: dict[str, list[int]]
    turn_entropies: dict[str, list[float]]
    metrics: dict[str, float]


def _weighted_only(
    micro_batches: list[MicroBatch], proximal: list[torch.Tensor] | None
) -> tuple[list[MicroBatch], list[torch.Tensor] | None]:
    """The micro-batches with some token weight > 0 (and their proximal log-probs)."""
    keep = [i for i, mb in enumerate(micro_batches) if float(mb.token_weights.sum()) > 0]
    return [micro_batches[i] for i in keep], None if proximal is None else [proximal[i] for i in keep]


class Trainer:
    """Owns the policy, its AdamW optimizer, the version counter and the checkpoint folder."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        config: Any | None = None,
        checkpoint_root: str | os.PathLike = "checkpoints",
        *,
        settings: TrainerSettings | None = None,
        version: int = 0,
        base_model_dir: str | os.PathLike | None = None,
        tie_word_embeddings: bool | None = None,
        adapter_dir: str | os.PathLike | None = None,
    ) -> None:
        """config: a TrainingConfig (or `settings`). base_model_dir: the frozen KL reference
        (default: model_dir). tie_word_embeddings: None keeps the folder's setting. With
        `settings.lora.enabled`, model_dir holds the base weights the adapters sit on, and
        adapter_dir the adapters to continue (None: fresh ones)."""
        self.settings = settings if settings is not None else TrainerSettings.from_config(config)
        self.checkpoint_root = Path(checkpoint_root)
        self.base_model_dir = Path(base_model_dir or model_dir).absolute()
        self.adapter_base_dir = Path(model_dir).absolute() if self.settings.lora.enabled else None
        self.policy = checkpoints.load_policy(model_dir, tie_word_embeddings=tie_word_embeddings)
        if self.settings.lora.enabled:  # the base frozen: AdamW below sees the adapters only
            self.policy = lora.with_adapters(self.policy, self.settings.lora, adapter_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad],
            lr=self.settings.lr,
            betas=self.settings.adam_betas,
            eps=self.settings.adam_eps,
            weight_decay=self.settings.weight_decay,
        )
        self.reference = self._load_reference() if self.settings.kl_coef > 0 else None
        self.full_logits = not head_matches_forward(self.policy)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.max_length = getattr(self.policy.config.get_text_config(), "max_position_embeddings", None)
        self._version = version
        self.rl_steps = 0  # optimizer steps of RL (the LR schedule's clock)
        self.bc_steps = 0
        self.skipped_steps = 0
        checkpoints.remove_partial_folders(self.checkpoint_root)

    @property
    def version(self) -> int:
        """Policy version of the current weights: +1 per optimizer step (RL or BC)."""
        return self._version

    def _load_reference(self) -> torch.nn.Module:
        if self.adapter_base_dir == self.base_model_dir:  # the adapters' base is the reference
            return lora.AdapterFreeView(self.policy)
        reference = checkpoints.load_policy(self.base_model_dir)
        reference.requires_grad_(False)
        return reference

    # ---- steps ----------------------------------------------------------------------------

    def train_step(
        self, batch: pa.Table, *, keep_turn_fraction: float | None = None, trajectory_weights: Any | None = None
    ) -> StepReport:
        """One decoupled-PPO step on a batch of TRAJECTORY_SCHEMA rows (any number of rows).

        keep_turn_fraction: train only the ceil(fraction x turns) turns of the batch with the highest
        mean token entropy under the start-of-step policy (None: every turn). trajectory_weights:
        (rows,), finite, >= 0: multiplies each trajectory's token weights; the loss stays a weighted
        mean (normalised by the total weight), so weight 0 == the row absent, 2 == the row twice.
        Staleness metrics leave out the experience pool's rows (`source` "pool").
        """
        started = time.perf_counter()
        if keep_turn_fraction is not None and not 0.0 < keep_turn_fraction <= 1.0:
            raise ValueError(f"keep_turn_fraction must be in (0, 1] or None, got {keep_turn_fraction}")
        weights = None if trajectory_weights is None else check_trajectory_weights(trajectory_weights, batch.num_rows)
        rewards = torch.from_numpy(batch["reward"].to_numpy().astype(np.float64))  # (n,)
        groups = group_index(batch["group_id"].to_pylist())  # (n,)
        advantages = turn_advantages(
            rewards, batch["turn_rewards"].to_pylist(), groups, self.settings.advantage,
            credit=self.settings.credit, discount=self.settings.discount,
        )  # (n, most turns)
        micro_batches = self._micro_batches(batch, advantages, self.settings.loss_aggregation, weights)
        selection, proximal = None, None
        if keep_turn_fraction is not None:
            selection = self._select_turns(batch, advantages, micro_batches, keep_turn_fraction, weights)
            micro_batches, proximal = selection.micro_batches, selection.proximal
        if weights is not None:  # a micro-batch of weight-0 rows only would add nothing but its cost
            micro_batches, proximal = _weighted_only(micro_batches, proximal)
        lr = learning_rate(
            self.rl_steps,
            base_lr=self.settings.lr,
            schedule=self.settings.lr_schedule,
            warmup_steps=self.settings.warmup_steps,
            total_steps=self.settings.steps,
            min_lr_ratio=self.settings.min_lr_ratio,
        )
        outcome = self._updates(micro_batches, lr, proximal)
        batch_staleness = rollout_staleness(batch, self._version)
        batch_metrics = {
            "staleness_mean": float(batch_staleness.mean()) if batch_staleness.size else 0.0,
            "staleness_max": float(batch_staleness.max()) if batch_staleness.size else 0.0,
            "zero_signal_group_frac": zero_signal_group_fraction(rewards, groups),
            "reward_mean": float(rewards.mean()) if batch.num_rows else 0.0,
            **(selection.metrics if selection is not None else {}),
        }
        if weights is not None:
            batch_metrics["trajectory_weight_mean"] = float(weights.mean()) if weights.size else 0.0
            batch_metrics["trajectory_weight_max"] = float(weights.max()) if weights.size else 0.0
        if outcome.applied:
            self.rl_steps += 1
        report = self._report(outcome, micro_batches, batch, lr, started, batch_metrics)
        if selection is None:
            return report
        return replace(report, kept_turns=selection.kept_turns, turn_entropies=selection.turn_entropies)

    def _select_turns(
        self, batch: pa.Table, advantages: torch.Tensor, micro_batches: list[MicroBatch], keep_fraction: float,
        weights: np.ndarray | None,
    ) -> TurnSelection:
        """High-entropy step selection. The proximal pass (the start-of-step policy, no grad; the
        one `updates_per_batch > 1` needs anyway) also gives each agent token's entropy; the turns
        with the highest mean entropy keep their tokens in the loss mask, the others leave it."""
        proximal, token_entropies = proximal_logprobs_and_entropy(
            self.policy, micro_batches, full_logits=self.full_logits, temperature=self.settings.temperature
        )  # (N_i,) each
        entropies = turn_mean_entropies(micro_batches, token_entropies, turn_counts(batch))  # per row (turns,)
        kept, kept_fraction = select_turns(entropies, keep_fraction)
        selected = self._micro_batches(batch, advantages, self.settings.loss_aggregation, weights, kept)
        # Same chunks and shapes as `micro_batches`, and a kept token was an agent token there: its
        # proximal log-prob is the one at its place in the old mask.
        pairs = [
            (mb, logprobs[mb.loss_mask[full.loss_mask]])
            for full, mb, logprobs in zip(micro_batches, selected, proximal, strict=True)
            if mb.num_loss_tokens
        ]
        ids = batch["trajectory_id"].to_pylist()
        turns_total = sum(e.size for e in entropies)
        return TurnSelection(
            micro_batches=[mb for mb, _ in pairs],
            proximal=[logprobs for _, logprobs in pairs],
            kept_turns={ids[row]: np.flatnonzero(mask).tolist() for row, mask in enumerate(kept)},
            turn_entropies={ids[row]: e.tolist() for row, e in enumerate(entropies)},
            metrics={"turns_kept_frac": kept_fraction if turns_total else 0.0, "turns_total": float(turns_total)},
        )

    def _updates(
        self, micro_batches: list[MicroBatch], lr: float, proximal: list[torch.Tensor] | None = None
    ) -> StepOutcome:
        """`updates_per_batch` decoupled-PPO updates on one batch (PPO epochs): the proximal policy
        of every update is the one the batch started from, so the clip bounds the whole step's move.
        Stops at the first update that is skipped; reports the last applied update's statistics, and
        a later update's skip as `updates_skipped` with a warning (the earlier updates stay applied)."""
        updates = self.settings.updates_per_batch
        if proximal is None and updates > 1:
            proximal = proximal_logprobs(
                self.policy, micro_batches, full_logits=self.full_logits, temperature=self.settings.temperature
            )
        outcome, applied = None, 0
        for _ in range(updates):
            with lora.dropout_active(self.policy):
                attempt = policy_gradient_step(
                    self.policy, self.optimizer, micro_batches, self.settings,
                    lr=lr, reference=self.reference, full_logits=self.full_logits, proximal=proximal,
                )
            if not attempt.applied:
                if outcome is not None:
                    logger.warning("update %d of %d on this batch skipped (%s); the earlier ones stay applied",
                                   applied + 1, updates, attempt.skip_reason)
                outcome = outcome or attempt
                break
            outcome, applied = attempt, applied + 1
        skipped_later = float(outcome.applied and applied < updates)
        return StepOutcome(
            outcome.applied, {**outcome.metrics, "updates": float(applied), "updates_skipped": skipped_later},
            outcome.skip_reason,
        )

    def bc_step(self, batch: pa.Table) -> StepReport:
        """One behaviour-cloning step (NLL of the agent tokens) on demonstration rows."""
        started = time.perf_counter()
        micro_batches = self._micro_batches(batch, torch.zeros(batch.num_rows), "token_mean")
        if self.settings.bc_loss == "transcript":
            micro_batches = [whole_transcript(mb) for mb in micro_batches]
        lr = self.settings.bc_lr if self.settings.bc_lr is not None else self.settings.lr
        with lora.dropout_active(self.policy):
            outcome = behaviour_cloning_step(
                self.policy, self.optimizer, micro_batches,
                lr=lr, max_grad_norm=self.settings.max_grad_norm, full_logits=self.full_logits,
            )
        if outcome.applied:
            self.bc_steps += 1
        return self._report(outcome, micro_batches, batch, lr, started, {})

    def _micro_batches(
        self, batch: pa.Table, advantages: torch.Tensor, aggregation: str, weights: np.ndarray | None = None,
        kept_turns: list[np.ndarray] | None = None,
    ) -> list[MicroBatch]:
        micro_batches = build_micro_batches(
            batch, advantages, micro_batch_size=self.settings.micro_batch_size, pad_token_id=self.pad_token_id,
            aggregation=aggregation, trajectory_weights=weights, kept_turns=kept_turns,
        )
        longest = max((mb.input_ids.shape[1] for mb in micro_batches), default=0)
        if self.max_length is not None and longest > self.max_length:
            raise ValueError(f"a sequence of the batch has {longest} tokens, more than the model's {self.max_length}")
        return micro_batches

    def _report(
        self, outcome: StepOutcome, micro_batches: list[MicroBatch], batch: pa.Table, lr: float,
        started: float, extra: dict[str, float],
    ) -> StepReport:
        start_version = self._version
        if outcome.applied:
            self._version += 1
        else:
            self.skipped_steps += 1
        seconds = time.perf_counter() - started
        input_tokens = sum(mb.num_input_tokens for mb in micro_batches)
        metrics = {
            **outcome.metrics,
            **extra,
            "lr": lr,
            "tokens": float(sum(mb.num_loss_tokens for mb in micro_batches)),
            "input_tokens": float(input_tokens),
            "padded_tokens": float(sum(mb.num_padded_tokens for mb in micro_batches)),
            "trajectories": float(batch.num_rows),
            "skipped": float(not outcome.applied),
            "step_seconds": seconds,
            "input_tokens_per_s": input_tokens / seconds,
            "version": float(self._version),
        }
        return StepReport(
            metrics={METRIC_PREFIX + name: value for name, value in metrics.items()},
            version=self._version,
            start_version=start_version,
            skipped=not outcome.applied,
            skip_reason=outcome.skip_reason,
        )

    # ---- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(self, *, mark: bool = False, reason: str = "") -> Path:
        """Write checkpoint `v{version:06d}` atomically, prune to the last `checkpoint_keep`
        (marked ones excepted); return its folder."""
        trainer_state = {
            "version": self._version,
            "rl_steps": self.rl_steps,
            "bc_steps": self.bc_steps,
            "skipped_steps": self.skipped_steps,
            "tie_word_embeddings": checkpoints.is_tied(self.policy),
            "base_model_dir": str(self.base_model_dir),
            "settings": self.settings.to_dict(),
        }
        if self.adapter_base_dir is not None:
            trainer_state["adapter_base_dir"] = str(self.adapter_base_dir)
        tensor_state = {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        # LoRA: merged full weights for the engine (new tensors; the policy stays as it is) + the adapter.
        model, weights, adapter = lora.checkpoint_parts(self.policy)
        path = checkpoints.write_checkpoint(
            self.checkpoint_root, self._version, model, self.tokenizer,
            trainer_state=trainer_state, tensor_state=tensor_state, weights=weights, adapter=adapter,
        )
        if mark:
            checkpoints.mark_checkpoint(path, reason)
        checkpoints.prune_checkpoints(self.checkpoint_root, self.settings.checkpoint_keep)
        return path

    def mark_checkpoint(self, version: int, reason: str = "") -> Path:
        """Keep checkpoint `version` past pruning (e.g. the best evaluation so far); return it."""
        path = checkpoints.checkpoint_path(self.checkpoint_root, version)
        if not path.is_dir():
            raise FileNotFoundError(f"no checkpoint {path} to mark (pruned, or never saved)")
        checkpoints.mark_checkpoint(path, reason)
        return path

    @classmethod
    def resume(
        cls,
        checkpoint_root: str | os.PathLike,
        config: Any | None = None,
        *,
        version: int | None = None,
        settings: TrainerSettings | None = None,
    ) -> "Trainer":
        """A trainer continuing from the newest checkpoint under `checkpoint_root` (or `version`).

        Settings: `settings`, else from `config`, else the ones saved in the checkpoint.
        """
        if version is None:
            path = checkpoints.latest_checkpoint(checkpoint_root)
        else:
            path = checkpoints.checkpoint_path(checkpoint_root, version)
        if path is None or not path.is_dir():
            raise FileNotFoundError(f"no checkpoint to resume from under {checkpoint_root} (version {version})")
        saved, tensors = checkpoints.read_trainer_state(path)
        if settings is None and config is not None:
            settings = TrainerSettings.from_config(config)
        elif settings is None:
            settings = TrainerSettings.from_config(None, **saved["settings"])
        adapted = "adapter_base_dir" in saved  # LoRA: the base from its folder, the adapters from the checkpoint
        lora.check_resumable(lora.LoraSettings.coerce(saved["settings"].get("lora")), settings.lora)
        trainer = cls(
            saved["adapter_base_dir"] if adapted else path, checkpoint_root=checkpoint_root, settings=settings,
            version=saved["version"], base_model_dir=saved["base_model_dir"],
            tie_word_embeddings=None if adapted else saved["tie_word_embeddings"],
            adapter_dir=lora.adapter_folder(path) if adapted else None,
        )
        trainer.optimizer.load_state_dict(tensors["optimizer"])
        torch.set_rng_state(tensors["torch_rng"])
        trainer.rl_steps, trainer.bc_steps = saved["rl_steps"], saved["bc_steps"]
        trainer.skipped_steps = saved["skipped_steps"]
        return trainer
