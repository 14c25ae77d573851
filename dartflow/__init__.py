"""dartflow: asynchronous RL post-training of LLM agents on multi-turn tasks."""

__version__ = "0.1.0"
