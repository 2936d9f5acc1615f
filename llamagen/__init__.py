"""LlamaGen ("Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation", arXiv 2406.06525).

Importing the package loads no model and changes no global state.
"""

from llamagen.checkpoints import save
from llamagen.generation import generate
from llamagen.gpt import GPT, GPTConfig, gpt_preset
from llamagen.gpt.loading import load_gpt
from llamagen.pipeline import Pipeline, load_pipeline
from llamagen.tokenizer import VQConfig, VQModel, vq_preset
from llamagen.tokenizer.loading import load_tokenizer

__version__ = "0.1.0"
__all__ = [
    "GPT",
    "GPTConfig",
    "Pipeline",
    "VQConfig",
    "VQModel",
    "generate",
    "gpt_preset",
    "load_gpt",
    "load_pipeline",
    "load_tokenizer",
    "save",
    "vq_preset",
]
