"""Motion tokenizers: T2M-GPT's 1-D VQ-VAE with a choice of quantizer (LlamaGen's, T2M-GPT's, FSQ), and the
measures of how well they keep a clip. The data they train on is `llamagen.data.motion`."""

from llamagen.motion.tokenizer import ARMS, MotionVQ, MotionVQConfig, arm_config, load_motion_tokenizer

__all__ = ["ARMS", "MotionVQ", "MotionVQConfig", "arm_config", "load_motion_tokenizer"]
