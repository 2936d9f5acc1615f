"""The Motion tab: a caption in, a generated motion out as an animated stick figure, with what the motion judge
reads it to do. Shown where the models include a motion generator (`ModelRegistry.motion_generators`)."""

from __future__ import annotations

import functools
import time

import gradio as gr

from llamagen.apps.common import GENERATOR_QUEUE, checked_cfg_scale, checked_seed, number_in_range, shown_errors
from llamagen.apps.models import ModelRegistry
from llamagen.data.motion import HELD_OUT_PAIRS
from llamagen.data.motion.drawing import motion_animation
from llamagen.motion.judge import ReadAction
from llamagen.motion.pipeline import MotionPipeline

MAX_MOTIONS_PER_REQUEST = 4
# Gradio hands a Plotly figure to the page without its frames (it calls Plotly.react with the data and layout
# alone), so the play button would have nothing to play: once the figure is drawn, this adds its frames.
ADD_FRAMES_JS = """
(plot) => {
  if (!plot || !plot.plot) return;
  const frames = JSON.parse(plot.plot).frames || [];
  const attach = (tries) => {
    const div = document.querySelector("#motion-animation .js-plotly-plot");
    if (div && div._fullLayout && window.Plotly) {
      window.Plotly.deleteFrames(div);
      window.Plotly.addFrames(div, frames);
    } else if (tries > 0) {
      setTimeout(() => attach(tries - 1), 100);
    }
  };
  attach(100);
}
"""
MAX_CAPTION_CHARACTERS = 300  # the text encoder reads 48 tokens; the tab says when it cuts a longer caption
EXAMPLE_CAPTIONS = [
    "a person walks forward slowly, then turns left",
    "someone jumps forward twice",
    "a person waves with both hands, then sits down",
    "a person walks fast",  # (walk, fast) is a held-out pair: no training caption shows it
]


def _read_aloud(actions: list[ReadAction]) -> str:
    if not actions:
        return "no action"
    return ", then ".join(
        f"{action.action} ({', '.join(f'{name} {value}' for name, value in action.params.items())})"
        if action.params else action.action
        for action in actions
    )  # fmt: skip


def checked_caption(caption) -> str:
    """A caption of at most MAX_CAPTION_CHARACTERS (an empty one is refused by the pipeline)."""
    caption = caption if isinstance(caption, str) else ""
    if len(caption) > MAX_CAPTION_CHARACTERS:
        raise ValueError(f"the caption has {len(caption)} characters; the limit is {MAX_CAPTION_CHARACTERS}")
    return caption


@shown_errors
def generate_motion(registry: ModelRegistry, model, caption, cfg_scale, temperature, top_k, seed, count):
    """The motions' animation (one panel a seed, from `seed` on) and a summary: their lengths, the time taken
    and, where the generator has a judge, what each motion is read to do."""
    pipe = registry.motion_pipeline(model)
    caption = checked_caption(caption)
    options = {
        "cfg_scale": checked_cfg_scale(cfg_scale),
        "temperature": number_in_range("temperature", temperature, 0.0, 10.0),
        "top_k": number_in_range("top-k", top_k, 0, pipe.gpt.config.vocab_size, True),
    }
    seed = checked_seed(seed)
    count = number_in_range("number of motions", count, 1, MAX_MOTIONS_PER_REQUEST, True)
    with registry.motion_generation(model):
        started = time.perf_counter()
        motions = pipe([caption] * count, seed=seed, **options)
        seconds = time.perf_counter() - started
    lines = [f"{count} motion{'s' * (count > 1)} in {seconds:.2f} s."]
    lines += pipe.text_encoder.token_ids([caption])[2]  # what the text encoder did not read of a long caption
    shown = {}
    for index, motion in enumerate(motions):
        title = f"seed {seed + index}"
        if len(motion.features) == 0:
            lines.append(f"- **{title}**: the generator ended before its first token (no motion)")
            continue
        shown[title] = motion.positions
        read = f"; the judge reads: {_read_aloud(pipe.read(motion))}" if pipe.judge is not None else ""
        lines.append(f"- **{title}**: {motion.seconds:.1f} s ({len(motion.features)} frames){read}")
    return (motion_animation(shown) if shown else None), "\n".join(lines)


def defaults_note(pipe: MotionPipeline) -> str:
    held_out = ", ".join(f"{action} {value}" for action, value in sorted(HELD_OUT_PAIRS, key=str))
    return (
        f"Sampling defaults: {pipe.sampling.describe()}. Training captions never pair {held_out}: asking for "
        "them tests composition."
    )


@shown_errors
def model_inputs(registry: ModelRegistry, model):
    """The chosen generator's sampling defaults, and no motion of the last one."""
    pipe = registry.motion_pipeline(model)
    sampling = pipe.sampling
    return sampling.cfg_scale, sampling.temperature, sampling.top_k, defaults_note(pipe), None, ""


def build(registry: ModelRegistry) -> None:
    models = list(registry.motion_generators)
    first = registry.motion_pipeline(models[0])
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(models, value=models[0], label="Motion generator")
            caption = gr.Textbox(EXAMPLE_CAPTIONS[0], label="Caption", elem_id="motion-caption")
            gr.Examples([[text] for text in EXAMPLE_CAPTIONS], inputs=[caption], label="Captions to try")
            cfg_scale = gr.Slider(0, 10, value=first.sampling.cfg_scale, step=0.25, label="Guidance scale (1 = none)",
                                  elem_id="motion-cfg-scale")  # fmt: skip
            temperature = gr.Slider(0.0, 2.0, value=first.sampling.temperature, step=0.05, label="Temperature")
            top_k = gr.Number(first.sampling.top_k, precision=0, label="Top-k (0: all)")
            defaults = gr.Markdown(defaults_note(first), elem_id="motion-defaults")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed")
                count = gr.Slider(1, MAX_MOTIONS_PER_REQUEST, value=2, step=1, label="Motions (one seed each)")
            run = gr.Button("Generate", variant="primary", elem_id="motion-button")
        with gr.Column(scale=2):
            animation = gr.Plot(label="Motion (press play)", elem_id="motion-animation")
            summary = gr.Markdown(elem_id="motion-summary")
    inputs = [model, caption, cfg_scale, temperature, top_k, seed, count]
    generated = run.click(functools.partial(generate_motion, registry), inputs, [animation, summary],
                          api_name="motion", **GENERATOR_QUEUE)  # fmt: skip
    generated.then(None, [animation], None, js=ADD_FRAMES_JS)
    model.change(functools.partial(model_inputs, registry), model,
                 [cfg_scale, temperature, top_k, defaults, animation, summary], api_name="motion_inputs")  # fmt: skip
