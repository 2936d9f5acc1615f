"""Small seeded models, conditions and logits shared by the generator tests."""

import torch

from llamagen.gpt import GPT, GPTConfig
from llamagen.text import ClipConfig, ClipTextEncoder
from llamagen.tokenizer import VQModel, vq_preset

SMALL = {"dim": 64, "n_layer": 2, "n_head": 4, "vocab_size": 97, "block_size": 16, "multiple_of": 32}


def small(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_dict({**SMALL, "num_classes": 5, "caption_dim": 24, **overrides})).eval()
    with torch.no_grad():  # the output layer starts at zero; give it weights so logits differ
        model.output.weight.normal_(std=0.5)
    return model


def condition(model: GPT, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    if config.model_type == "c2i":
        return torch.randint(0, config.num_classes, (batch,), generator=generator), None
    features = torch.randn(batch, config.cls_token_num, config.caption_dim, generator=generator)
    mask = torch.ones(batch, config.cls_token_num)
    mask[1, : config.cls_token_num // 2] = 0  # a left-padded caption, as the original's T5 features are
    return features, mask


@torch.no_grad()
def cached_logits(model: GPT, tokens, cond, cond_mask, position_tensor: bool = False):
    """Prefill, then decode the given tokens one at a time: the (B, t+1, vocab) logits of every step
    (`position_tensor`: each position given as a one-element tensor, as a CUDA graph replays the step)."""
    model.setup_cache(tokens.shape[0])
    steps = [model.prefill(cond, cond_mask)]
    for i in range(tokens.shape[1]):
        position = model.prefix_length + i
        steps.append(model.decode_step(tokens[:, i : i + 1], torch.tensor([position]) if position_tensor else position))
    model.clear_cache()
    return torch.stack(steps, 1)


def small_tokenizer(codebook_size: int = 64) -> VQModel:
    """A random downsample-4 tokenizer: 16x16 images for a 16-token generator."""
    torch.manual_seed(0)
    return VQModel(vq_preset("VQ-4-tiny", codebook_size=codebook_size)).eval()


# A CLIP small enough to build in a moment: 12 caption tokens of width 32.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_encoder(seed: int = 0) -> ClipTextEncoder:
    torch.manual_seed(seed)
    return ClipTextEncoder.from_config(ClipConfig.from_dict(TINY_CLIP)).eval()


def logits_with_ties(vocab: int, seed: int = 0) -> torch.Tensor:
    """(4, vocab) float32 logits that a top-k must order carefully: plain; rounded to bf16 (many equal values);
    nearly all equal; and a row with NaN, +-inf and -0 among them (-0 equals +0, NaN ranks above +inf, as
    torch.sort has them)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, vocab, generator=generator) * 3
    logits[1] = logits[1].bfloat16().float()
    logits[2] = torch.randint(-3, 3, (vocab,), generator=generator).float()
    for start, step, value in [(0, 5, float("nan")), (1, 7, float("inf")), (2, 7, float("-inf")), (3, 4, -0.0)]:
        logits[3, start::step] = value
    return logits


# A generator trained on codes of digits by a random tokenizer: 16x16 digits -> 4x4 codes of 64.
DIGIT_TOKENIZER = vq_preset("VQ-4-tiny", codebook_size=64)
TINY_GENERATOR = {"dim": 32, "n_layer": 2, "n_head": 2, "multiple_of": 8}


def digit_tokenizer() -> VQModel:
    torch.manual_seed(0)
    return VQModel(DIGIT_TOKENIZER).eval()


def write_digit_codes(path) -> None:
    """Codes of 40 digits, five crops each, by the random `digit_tokenizer`."""
    from llamagen.data.codes import extract_codes, source_size
    from llamagen.data.digits import Digits

    data = Digits("train", size=source_size("crops", 16))
    extract_codes(digit_tokenizer(), data, path, 16, "crops", count=40, show_progress=False,
                  description={"tokenizer": "digits-vq", "command": "llamagen extract-codes ..."})  # fmt: skip


def generator_config(codes, **overrides) -> GPTConfig:
    from llamagen.data.codes import CodesDataset
    from llamagen.training.gpt import generator_config_for

    return generator_config_for(CodesDataset(codes).info, GPTConfig(**TINY_GENERATOR, **overrides))


def generator_training(steps: int, **overrides):
    from llamagen.training.gpt import GPTTrainingConfig

    values = {"batch_size": 4, "warmup_steps": 0, "final_lr_ratio": 1.0, "lr": 1e-3, "log_every": 1,
              "checkpoint_every": 2, "bf16": False, "ema_decay": 0.9}  # fmt: skip
    return GPTTrainingConfig(steps=steps, **{**values, **overrides})


def one_line_error(capsys, *argv: str) -> str:
    """Run the `llamagen` command: it must exit with status 2 and end its stderr (where a progress bar may have
    been drawn) with one line of error and no traceback; that line is returned."""
    from llamagen.cli import main

    status = main(list(argv))
    stderr = capsys.readouterr().err
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    assert status == 2 and "Traceback" not in stderr and last.startswith("llamagen "), (status, stderr[-2000:])
    return last


def tiny_motion_generator(folder, codebook_size: int = 64, seed: int = 0):
    """A random text-to-motion GPT file in `folder`, naming a tiny motion tokenizer and motion CLIP saved beside it
    (as the text-to-motion study's generators name theirs)."""
    from llamagen import save
    from llamagen.gpt import gpt_preset
    from llamagen.motion import MotionVQ, arm_config
    from llamagen.motion.codes import SEQUENCE
    from llamagen.motion.text import MotionTextEncoder

    torch.manual_seed(seed)
    text = {"context_length": 48, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
    clip = ClipConfig(embed_dim=8, vision_cfg={"width": 8, "dilations": [1]}, text_cfg=text)
    vq = MotionVQ(arm_config("llamagen", codebook_size, width=8, depth=1))
    tokenizer = save(vq, folder / "motion-vq.safetensors")
    encoder = save(MotionTextEncoder.from_config(clip), folder / "motion-clip.safetensors")
    gpt = GPT(gpt_preset("GPT-XS", vocab_size=codebook_size + 1, block_size=SEQUENCE, model_type="t2i",
                         caption_dim=16, cls_token_num=48))  # fmt: skip
    return save(gpt, folder / "motion-gpt.safetensors", metadata={"tokenizer": str(tokenizer),
                                                                  "text_encoder": str(encoder)})  # fmt: skip


def best_row(evaluation: dict) -> dict:
    """A model card's evaluation row at its best guidance scale."""
    return next(row for row in evaluation["by_cfg_scale"] if row["cfg_scale"] == evaluation["best_cfg_scale"])
