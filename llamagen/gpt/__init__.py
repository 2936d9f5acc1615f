"""The Llama image generator (Sec. 2.2 of the paper) and its sampler."""

from llamagen.gpt.config import GPT_PRESETS, GPTConfig, gpt_preset
from llamagen.gpt.model import GPT

__all__ = ["GPT", "GPT_PRESETS", "GPTConfig", "gpt_preset"]
