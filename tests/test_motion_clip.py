"""The motion CLIP: its text tower gives the generator's prefix as shapes-clip's does, its motion tower reads a
clip the same padded or alone, and a trained one is saved and loads."""

from __future__ import annotations

import pytest
import torch

from llamagen.checkpoints import embedded_card
from llamagen.data.motion import Motions
from llamagen.data.motion.windows import PaddedClips
from llamagen.motion.measures import HELD_OUT_SEED
from llamagen.motion.retrieval import parameter_choice
from llamagen.motion.text import MotionTextEncoder, load_motion_text_encoder
from llamagen.text.clip import ClipConfig
from llamagen.training.motion_clip import train_motion_clip
from llamagen.training.motion_export import export_motion_text_encoder
from llamagen.training.settings import ClipTrainingConfig

TINY = ClipConfig(
    embed_dim=8,
    vision_cfg={"width": 8, "dilations": [1, 2]},
    text_cfg={"context_length": 48, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
)


def test_captions_become_left_aligned_prefix_features_and_motions_read_alike_padded_or_alone():
    torch.manual_seed(0)
    encoder = MotionTextEncoder.from_config(TINY).eval()
    encoding = encoder.encode(["a person walks forward slowly, then turns left", "someone runs fast"])
    assert encoding.features.shape == (2, 48, 16) and encoding.mask[:, -1].all() and not encoding.mask[:, 0].any()
    clips = PaddedClips(seed=1)
    items = [clips[index] for index in range(3)]
    features = torch.stack([item["features"] for item in items])
    frames = torch.tensor([item["frames"] for item in items])
    with torch.no_grad():
        together = encoder.embed_motions(features, frames)
        for row, item in enumerate(items):
            alone = encoder.embed_motions(item["features"][: item["frames"]].unsqueeze(0), frames[row : row + 1])
            torch.testing.assert_close(together[row], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(3))
    with pytest.raises(TypeError, match="embeds motions"):
        encoder.embed_images(torch.zeros(1, 3, 8, 8))


def test_a_trained_motion_clip_is_saved_and_loads(tmp_path):
    training = ClipTrainingConfig(steps=3, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=2)
    encoder, steps, finished = train_motion_clip(training, tmp_path / "clip", TINY, show_progress=False)
    assert (steps, finished) == (3, True)
    assert encoder.model.visual.feature_std.min() >= 1e-2  # the statistics were measured
    loaded = load_motion_text_encoder(tmp_path / "clip" / "final.safetensors")
    captions = ["a woman does a high kick with the right leg"]
    torch.testing.assert_close(loaded.encode(captions).features, encoder.encode(captions).features)
    card = export_motion_text_encoder(tmp_path / "clip", "tiny-motion-clip", "captioned clips", "llamagen train ...",
                                      assets_dir=tmp_path, clips=4)  # fmt: skip
    assert card["kind"] == "motion-clip" and card["evaluation"]["candidates"] == 4
    assert set(card["evaluation"]["right_value"]) <= {"speed", "direction", "size", "side", "angle", "count"}
    shipped = load_motion_text_encoder(tmp_path / "tiny-motion-clip.safetensors")
    torch.testing.assert_close(shipped.encode(captions).features, encoder.encode(captions).features, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="hard negatives"):
        train_motion_clip(ClipTrainingConfig(hard_negatives=True), tmp_path / "other", TINY)


def test_the_shipped_motion_clip_prefers_each_clips_own_parameter_values_as_its_card_says():
    card = embedded_card("motion-clip")["evaluation"]["right_value"]
    data = Motions(seed=HELD_OUT_SEED, captioned=True)
    choices = parameter_choice(load_motion_text_encoder("motion-clip"), [data[i] for i in range(64)])
    for name, share in choices.items():  # the card's shares are 0.99-1.0 over 500 clips
        assert share >= card[name] - 0.1, name
