"""The text-to-motion study: the same generator over each tokenizer's codes, judged on what the captions asked.

For each motion tokenizer (trained by the motion tokenizer study), the captioned clips are turned into token
sequences (`motion.codes`), a GPT learns them with the captions as its prefix (through the motion CLIP's text
tower, as text-to-image does through shapes-clip), and it writes one motion for each of the evaluation
captions. The motion judge reads each motion; a row holds, for captions whose (action, value) pairs training
saw and for captions of the held-out pairs, how often the actions are right, how often everything is, and
the share of parameters right where the actions are, each with its Wilson interval. Two references stand
beside the rows: the judge on the real clips of the same captions (the ceiling), and in each row a control,
its motions held to the next caption's actions (what the measure gives a motion that ignores its caption).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamagen.data.codes import CodesDataset
from llamagen.data.motion import Motions
from llamagen.gpt import gpt_preset
from llamagen.motion.codes import extract_motion_codes, motion_codes_of
from llamagen.motion.generation import generate_motions
from llamagen.motion.judge import MotionScores, load_motion_judge, score_motions
from llamagen.motion.measures import HELD_OUT_SEED
from llamagen.motion.pipeline import STUDY_SAMPLING
from llamagen.motion.text import load_motion_text_encoder
from llamagen.motion.tokenizer import load_motion_tokenizer
from llamagen.training.gpt import generator_config_for, train_gpt
from llamagen.training.settings import GPTTrainingConfig
from llamagen.training.studies import resumable, run_schedule, run_study

SPLITS = ("seen", "held_out")
MEASURES = ("actions", "everything", "parameters")
CSV_FIELDS = ("tokenizer", "codebook_size", *(f"{split}_{measure}" for split in (*SPLITS, "control")
                                              for measure in MEASURES))  # fmt: skip


@dataclass
class TextToMotionSettings:
    tokenizers: tuple[str, ...]  # motion tokenizer files: each is one run, named by its folder
    text_encoder: str  # a motion CLIP
    judge: str  # a motion judge
    clips: int = 20_000  # captioned clips turned into codes
    preset: str = "GPT-XS"
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    ema_decay: float = 0.999
    captions: int = 256  # evaluation captions of each split
    cfg_scale: float = STUDY_SAMPLING.cfg_scale  # a motion generator without a card samples with it too
    seed: int = 0

    def training(self) -> dict:
        """What every run shares: all but the tokenizers."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "tokenizers"}


def run_name(tokenizer: str) -> str:
    """A tokenizer's run: its folder's name (`final.safetensors` of a study run), else its file's."""
    path = Path(tokenizer)
    return path.parent.name if path.name == "final.safetensors" else path.stem


def evaluation_captions(count: int) -> dict[str, list[dict]]:
    """Each split's clips: captions whose pairs training saw, and captions of the held-out pairs."""
    seen = Motions(seed=HELD_OUT_SEED, captioned=True)
    held_out = Motions(seed=HELD_OUT_SEED, only_held_out_pairs=True)
    return {"seen": [seen[i] for i in range(count)], "held_out": [held_out[i] for i in range(count)]}


def study_text_to_motion(settings: TextToMotionSettings, out: str | Path, work_dir: str | Path,
                         show_progress: bool = True) -> dict:  # fmt: skip
    """Train and judge a generator for each tokenizer that `out` (JSON) does not hold yet (`run_study`)."""
    names = {run_name(path): path for path in settings.tokenizers}
    if len(names) != len(settings.tokenizers):
        raise ValueError("two tokenizers share a run name (their folders' names): give each its own folder")
    text_encoder, judge = load_motion_text_encoder(settings.text_encoder), load_motion_judge(settings.judge)
    asked = evaluation_captions(settings.captions)

    def train(name: str, folder: Path) -> dict | None:
        return _run(settings, names[name], name, folder, text_encoder, judge, asked, show_progress)

    real = {
        f"{split}_{key}": value
        for split, items in asked.items()
        for key, value in score_fields(
            score_motions(judge, [item["features"] for item in items], [item["segments"] for item in items])
        ).items()
    }

    def add_ceiling(results: dict, row: dict) -> None:
        results["real"] = real

    return run_study(list(names), train, out, work_dir, settings.training(), CSV_FIELDS, add_ceiling)


def _run(settings: TextToMotionSettings, path: str, name: str, folder: Path, text_encoder, judge, asked,
         show_progress: bool) -> dict | None:  # fmt: skip
    tokenizer = load_motion_tokenizer(path)
    codes = folder / "motion.codes"
    if not (codes.is_file() and motion_codes_of(codes, str(path), settings.clips, settings.seed)):
        extract_motion_codes(
            tokenizer,
            settings.clips,
            codes,
            seed=settings.seed,
            show_progress=show_progress,
            tokenizer_source=str(path),
        )
    dataset = CodesDataset(codes, seed=settings.seed)
    config = generator_config_for(dataset.info, gpt_preset(settings.preset), text_encoder)
    training = GPTTrainingConfig(**run_schedule(settings.steps, settings.seed), batch_size=settings.batch_size,
                                 lr=settings.lr, ema_decay=settings.ema_decay)  # fmt: skip
    run_dir = folder / "gpt"
    # On the CPU, where the tokenizer, the judge and the seeded sampling are; each process trains its own runs.
    outcome = train_gpt(config, training, dataset, run_dir, text_encoder=text_encoder, resume=resumable(run_dir),
                        show_progress=show_progress, device="cpu", alone=True)  # fmt: skip
    if not outcome.finished:
        return None
    gpt = outcome.model.eval()
    row = {"tokenizer": name, "codebook_size": tokenizer.config.codebook_size}
    for split, items in asked.items():
        motions = generate_motions(gpt, tokenizer, text_encoder, [item["caption"] for item in items],
                                   cfg_scale=settings.cfg_scale, seed=settings.seed)  # fmt: skip
        scores = score_fields(score_motions(judge, motions, [item["segments"] for item in items]))
        row.update({f"{split}_{key}": value for key, value in scores.items()})
        if split == "seen":  # the control: each motion held to the next caption's actions
            others = [items[(i + 1) % len(items)]["segments"] for i in range(len(items))]
            row.update(
                {f"control_{key}": value for key, value in score_fields(score_motions(judge, motions, others)).items()}
            )
    return row


def score_fields(scores: MotionScores) -> dict[str, float | int | None]:
    """Each measure's share with its interval and n, flat (None where it does not apply), for rows."""
    fields = {}
    for measure in MEASURES:
        estimate = getattr(scores, measure)
        fields[measure] = None if estimate is None else float(estimate.mean)
        fields[f"{measure}_low"] = None if estimate is None else float(estimate.low)
        fields[f"{measure}_high"] = None if estimate is None else float(estimate.high)
        fields[f"{measure}_n"] = None if estimate is None else estimate.n
    return fields
