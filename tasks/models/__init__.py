"""Policy models without a hub: a tiny local Llama and SmolLM2 from its PyPI GGUF."""
