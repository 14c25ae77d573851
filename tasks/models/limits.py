"""Bounds of the tiny policy, kept free of heavy imports so the run config can check them."""

# The corpus (seed 0, default length) yields at most ~3200 distinct BPE tokens.
MAX_VOCAB_SIZE = 3072
# Every byte, the three chat markers and at least one merge.
MIN_VOCAB_SIZE = 256 + 3 + 1

# Head sizes vLLM's CPU attention backend accepts (vllm/v1/attention/backends/cpu_attn.py).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
