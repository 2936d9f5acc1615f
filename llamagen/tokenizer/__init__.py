"""The VQ image tokenizer (Sec. 2.1 of the paper): images <-> grids of discrete codes."""

from llamagen.tokenizer.config import VQ_PRESETS, VQConfig, vq_preset
from llamagen.tokenizer.model import VQModel, VQOutput
from llamagen.tokenizer.quantizer import QuantizerOutput, VectorQuantizer

__all__ = ["VQ_PRESETS", "QuantizerOutput", "VQConfig", "VQModel", "VQOutput", "VectorQuantizer", "vq_preset"]
