"""The episodes' system message: the default text and a run config's template (no heavy imports:
the run config imports this)."""

from __future__ import annotations

from typing import Callable

# The system message of every episode unless the run config sets rollout.system_prompt:
# {action_format} stands for the environment's action_format.
DEFAULT_SYSTEM_PROMPT = (
    "You are an agent solving a task over one or more turns. Each of your replies is one action; "
    "the environment answers it. Write only the action.\n"
    "Action format: {action_format}"
)


def system_prompt_from(template: str | None) -> Callable[[str], str] | None:
    """A system prompt from a config's template (its {action_format} filled in); None: no system message.

    Plain replacement, not str.format: other braces in the template are text."""
    if template is None:
        return None
    return lambda action_format: template.replace("{action_format}", action_format)
