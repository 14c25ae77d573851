"""Episode prompts: the model's chat template over the episode's history, extended token-exactly.

The first prompt of an episode is the chat template rendered over
    [system: how to act (the environment's action_format), user: the reset observation]
with the generation prompt, then tokenized. Every later prompt is the previous prompt, then the
response tokens exactly as they were sampled, then the tokens that the chat template puts between
that response and the next assistant turn (end of the assistant message, the new observation as a
user message, the generation prompt). So turn k's prompt is a token prefix-extension of turn k-1's
prompt + response: no re-tokenization drift (the model's own tokens are what it conditions on, even
where decoding and re-encoding them would differ), the trainer can lay a whole episode out as one
sequence, and the engine's prefix cache hits.

Templates that rewrite history (e.g. drop earlier reasoning) break the prefix property: for them
each prompt is the template rendered over the whole history and re-tokenized, and
`Conversation.incremental` turns False (recorded in the trajectory's metadata).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from dartflow.tasks.rollout.system_prompt import DEFAULT_SYSTEM_PROMPT, system_prompt_from

Message = dict[str, str]
# End-of-turn markers of common chat templates, used as stop tokens when the vocabulary has them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def default_system_prompt(action_format: str) -> str:
    """The system message of every episode: one action per reply, in the environment's format."""
    return system_prompt_from(DEFAULT_SYSTEM_PROMPT)(action_format)


@lru_cache(maxsize=256)
def _action_format(name: str, params_json: str) -> str:
    from dartflow.tasks.envs.registry import make_environment

    environment = make_environment(name, json.loads(params_json))
    try:
        return str(environment.action_format)
    finally:
        environment.close()


def action_format_of(environment: str, params: dict[str, Any] | None = None) -> str:
    """The registered environment's `action_format`, read from a throwaway instance (cached)."""
    return _action_format(environment, json.dumps(params or {}, sort_keys=True))


@dataclass(frozen=True)
class Conversation:
    """An episode's history as chat messages and the token ids of the next prompt."""

    messages: tuple[Message, ...]
    prompt_ids: tuple[int, ...]
    incremental: bool = True  # every prompt so far extended the previous prompt + response exactly


class ChatPrompter:
    """Builds episode prompts with a tokenizer's chat template; decodes responses into actions."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        system_prompt: Callable[[str], str] | None = default_system_prompt,
    ):
        if tokenizer.chat_template is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.stop_token_ids = end_of_turn_ids(tokenizer)
        # Rollouts of one problem share their first prompt: render and tokenize it once.
        self._first_prompt = lru_cache(maxsize=1024)(self._render_first_prompt)

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, **kwargs: Any) -> ChatPrompter:
        return cls(AutoTokenizer.from_pretrained(str(model_dir)), **kwargs)

    def render(self, messages: Sequence[Message], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        # The template writes every special marker itself: the tokenizer must add none.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def start(self, observation: str, action_format: str = "") -> Conversation:
        """The first prompt: system message (when a system prompt is set) + the reset observation."""
        return self._first_prompt(observation, action_format)

    def _render_first_prompt(self, observation: str, action_format: str) -> Conversation:
        messages: list[Message] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt(action_format)})
        messages.append({"role": "user", "content": observation})
        ids = self.encode(self.render(messages, generation_prompt=True))
        return Conversation(tuple(messages), tuple(ids))

    def action_text(self, response_ids: Sequence[int]) -> str:
        """What the environment receives: the response decoded, special tokens (end of turn) dropped."""
        return self.tokenizer.decode(list(response_ids), skip_special_tokens=True)

    def extend(
        self, conversation: Conversation, response_ids: Sequence[int], action: str, observation: str
    ) -> Conversation:
        """The next prompt: `conversation` + the sampled response (as `action`) + the new observation."""
        messages = (
            *conversation.messages,
            {"role": "assistant", "content": action},
            {"role": "user", "content": observation},
        )
        between = template_between(
            self.render(conversation.messages, generation_prompt=True),
            self.render(messages[:-1], generation_prompt=False),
            self.render(messages, generation_prompt=True),
            action,
            self._decoded_stop(response_ids),
        )
        if between is None or not conversation.incremental:
            ids = self.encode(self.render(messages, generation_prompt=True))
            return Conversation(messages, tuple(ids), incremental=False)
        ids = (*conversation.prompt_ids, *map(int, response_ids), *self.encode(between))
        return Conversation(messages, ids, incremental=True)

    def _decoded_stop(self, response_ids: Sequence[int]) -> str:
        """The text of the response's final end-of-turn token, or '' when it has none (cut short)."""
        if response_ids and int(response_ids[-1]) in self.stop_token_ids:
            return self.tokenizer.decode([int(response_ids[-1])], skip_special_tokens=False)
        return ""


def template_between(
    previous_prompt: str, with_assistant: str, next_prompt: str, action: str, stop_text: str
) -> str | None:
    """Template text between a sampled response and the next generation prompt's end, or None.

    `previous_prompt` is the template over the history with the generation prompt; `with_assistant`
    the history + the assistant message `action` (no generation prompt); `next_prompt` that + the new
    user message + the generation prompt. The template must render the assistant message as
    `previous_prompt + action + closing` and `next_prompt` as an extension of `with_assistant`;
    otherwise (it rewrites history) None. `stop_text`, the response's own end-of-turn token, is
    already in the sampled tokens: it is taken off the front of `closing`.
    """
    head = previous_prompt + action
    if not with_assistant.startswith(head) or not next_prompt.startswith(with_assistant):
        return None
    closing = with_assistant[len(head) :]
    if stop_text:
        if not closing.startswith(stop_text):
            return None
        closing = closing[len(stop_text) :]
    return closing + next_prompt[len(with_assistant) :]


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Token ids that end an assistant turn: the eos and the template's end-of-turn markers."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocabulary = tokenizer.get_vocab()
    ids.update(int(vocabulary[token]) for token in END_OF_TURN_TOKENS if token in vocabulary)
    return tuple(sorted(ids))
