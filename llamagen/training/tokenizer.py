"""Training the VQ tokenizer: the original's objective (Sec. 2.1), resumable exactly.

Loss = L2 reconstruction + codebook loss + beta x commitment loss, and optionally: the entropy loss,
LPIPS (when the user gives its weights) and, from `disc_start` on, a PatchGAN's hinge loss while the
discriminator trains beside the tokenizer.
Every batch is a pure function of (seed, step), so resuming from a checkpoint at step s reproduces
the run that was never interrupted: model, EMA, optimizer, step and RNG state are all restored.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from llamagen.checkpoints import save
from llamagen.data.batches import seeded_generator, step_loader
from llamagen.evaluation.lpips import LPIPS
from llamagen.tokenizer import VQConfig, VQModel
from llamagen.tokenizer.autoencoder import AttnBlock, ResnetBlock
from llamagen.training.codebook_init import initialise_codebook
from llamagen.training.common import TrainingRun, forget_moments, load_optimizer_state, update_ema
from llamagen.training.discriminator import PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss
from llamagen.training.distributed import Processes, process_group
from llamagen.training.settings import TokenizerTrainingConfig


@dataclasses.dataclass
class TrainingOutcome:
    model: VQModel  # the EMA weights
    step: int  # steps done
    finished: bool  # False when a signal stopped the run first; --resume continues it
    trained: VQModel  # the weights themselves (in a short run their EMA trails far behind)


def train_tokenizer(
    model_config: VQConfig | None,
    training: TokenizerTrainingConfig,
    dataset,
    out_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    command: str | None = None,
    workers: int = 0,
    device: str | torch.device | None = None,
    lpips: LPIPS | None = None,
    changes: Collection[str] = (),
    alone: bool = False,
) -> TrainingOutcome:
    """Train (or, with `resume`, continue) a tokenizer; its EMA weights go to `final.safetensors` at the end.

    `dataset` items are dicts with an "image" in [-1, 1] (see `llamagen.data`); `workers` processes read
    them. Under torchrun every process runs this with the same arguments and takes its share of each batch.
    `lpips` adds the perceptual loss; `training.disc_start` the PatchGAN. `command`, the command line that
    started the run, is recorded in `config.json` for its model card. A resumed run must have the settings
    it was trained with, but those named in `changes` (`TrainingRun`). `alone` trains in this process only, even
    under torchrun (a study gives each process whole runs). With `training.init_from` the run starts from those
    weights, and `model_config` (None: theirs) may change only what training reads (the losses' weights, dropout),
    add residual blocks (`num_res_blocks`: the model grows, and starts where those weights are), and with
    `training.decoder_only` change the decoder's widths too (that decoder then starts afresh)."""
    start = _starting_weights(training.init_from, model_config, training.decoder_only)
    model_config = start.config if model_config is None else model_config
    with process_group(device, alone) as processes:
        run = TrainingRun(out_dir, resume, processes, model_config.to_dict(), training, command, changes=changes)
        parts = _Parts(model_config, training, processes)
        if lpips is not None:
            lpips = lpips.to(processes.device)
        if run.state is not None:
            parts.load(run.state)
        elif start is not None:
            for model in (parts.model, parts.ema):
                _load_starting_weights(model, start)
        elif training.codebook_init == "kmeans":
            initialise_codebook(parts.model, dataset, training.batch_size, training.seed)
            parts.ema.quantize.embedding.weight.copy_(parts.model.quantize.embedding.weight)
        run.start_rng()
        batches = step_loader(dataset, training.batch_size, run.start, training.steps, training.seed, workers,
                              processes.rank, processes.world)  # fmt: skip
        for step, batch in run.steps(batches, show_progress):
            images = batch["image"].to(processes.device, non_blocking=True)
            losses = _train_step(parts, training, images, step, lpips, processes)
            update_ema(parts.ema, parts.model, training.ema_decay)
            if run.log_due():
                run.log(losses, shown=("loss", "psnr", "usage"), usage=parts.model.codebook_usage())
            if run.checkpoint_due():
                run.checkpoint(parts.state())
        run.checkpoint(parts.state())
        if run.finished and processes.is_main:
            save(parts.ema, run.out_dir / "final.safetensors")
        outcome = TrainingOutcome(parts.ema, run.step, run.finished, parts.model.eval())
        del parts  # the DDP structures, in reference cycles: closing the group collects them (`Processes.close`)
        return outcome


# What training reads and the weights do not: a run started from weights may set these anew.
TRAINING_ONLY_FIELDS = ("commit_loss_beta", "entropy_loss_ratio", "dropout_p")
# What a run that trains the decoder alone may change too: the decoder's widths, started afresh.
DECODER_FIELDS = ("decoder_ch_mult",)


def _starting_weights(init_from: str | None, model_config: VQConfig | None, decoder_only: bool) -> VQModel | None:
    """The tokenizer a run starts from (None: at random), its model checked against `model_config`."""
    if init_from is None:
        if model_config is None:
            raise ValueError("a tokenizer is trained from a model config, or from weights (init_from)")
        return None
    from llamagen.tokenizer.loading import load_tokenizer

    start = load_tokenizer(init_from, device="cpu")
    if model_config is not None:
        if model_config.num_res_blocks < start.config.num_res_blocks:
            raise ValueError(
                f"the weights of {init_from!r} have {start.config.num_res_blocks} residual blocks a level, the "
                f"config {model_config.num_res_blocks}: a run may add blocks, not remove them"
            )
        settable = TRAINING_ONLY_FIELDS + ("num_res_blocks",) + (DECODER_FIELDS if decoder_only else ())
        kept = {name: getattr(model_config, name) for name in settable}
        theirs = dataclasses.asdict(start.config) | kept
        differ = sorted(name for name, value in dataclasses.asdict(model_config).items() if theirs[name] != value)
        if differ:
            raise ValueError(f"the weights of {init_from!r} are another model: {', '.join(differ)} differ; "
                             "leave the config out to train theirs")  # fmt: skip
    return start


def _load_starting_weights(model: VQModel, start: VQModel) -> None:
    """`start`'s weights into `model`: all of them, or all but the decoder's where its widths differ (a decoder
    trained alone, from scratch, for `start`'s codes). Where `model` has more residual blocks a level, the new
    blocks start as the identity, so the grown model computes what `start` does (function-preserving growth, as
    Net2Net's deeper networks, Chen et al. 2016)."""
    fresh_decoder = any(getattr(model.config, name) != getattr(start.config, name) for name in DECODER_FIELDS)

    def carried(name: str) -> bool:  # a weight that `start` gives `model`, or a new block's
        return not (fresh_decoder and name.startswith("decoder."))

    weights = {name: value for name, value in start.state_dict().items() if carried(name)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    added = {name.rsplit(".", 2)[0] for name in missing if carried(name)}
    blocks = dict(model.named_modules())
    last_layers = [_last_layer(blocks.get(name)) for name in added]
    if unexpected or None in last_layers:
        raise ValueError(f"the starting weights do not fit this model: {sorted(set(missing) | set(unexpected))}")
    with torch.no_grad():
        for layer in last_layers:
            layer.weight.zero_()
            layer.bias.zero_()


def _last_layer(block: torch.nn.Module | None) -> torch.nn.Module | None:
    """The layer that, zeroed, makes `block` pass its input through: a residual block's second convolution (where
    it has no shortcut projection), an attention block's output projection; None for any other module."""
    if isinstance(block, AttnBlock):
        return block.proj_out
    if isinstance(block, ResnetBlock) and not hasattr(block, "nin_shortcut"):
        return block.conv2
    return None


class _Parts:
    """Everything a step updates and a checkpoint holds; `wrapped` are the modules as the step calls them
    (in DDP under torchrun)."""

    def __init__(self, model_config: VQConfig, training: TokenizerTrainingConfig, processes: Processes):
        torch.manual_seed(training.seed)
        self.model = VQModel(model_config).to(processes.device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if training.decoder_only:  # the encoder and codebook run without a graph: the step costs the decoder's
            self.model.requires_grad_(False)
            self.model.post_quant_conv.requires_grad_(True)
            self.model.decoder.requires_grad_(True)
            self.model.encoder.eval()  # no dropout: the decoder learns the codes the encoder gives
        self.optimizer = self._adamw(self.model, training)
        self.wrapped = _wrap_for_processes(self.model, processes)
        self.discriminator = self.disc_optimizer = self.wrapped_discriminator = None
        if training.disc_start is not None:
            self.discriminator = PatchDiscriminator().to(processes.device).train()
            self.disc_optimizer = self._adamw(self.discriminator, training)
            self.wrapped_discriminator = _wrap_for_processes(self.discriminator, processes)

    @staticmethod
    def _adamw(module: torch.nn.Module, training: TokenizerTrainingConfig) -> torch.optim.Optimizer:
        betas = (training.beta1, training.beta2)
        trained = [parameter for parameter in module.parameters() if parameter.requires_grad]
        return torch.optim.AdamW(trained, lr=training.lr, betas=betas, weight_decay=training.weight_decay)

    def state(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        return state

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.discriminator is not None:
            if "discriminator" not in state:
                raise ValueError("the checkpoint was trained without a discriminator; resume it without one")
            self.discriminator.load_state_dict(state["discriminator"])
            load_optimizer_state(self.disc_optimizer, state["disc_optimizer"])


def _wrap_for_processes(module: torch.nn.Module, processes: Processes) -> torch.nn.Module:
    if not processes.distributed:
        return module
    # Each process's usage window counts its own share of the codes (rank 0's is logged and saved), so
    # buffers must not be broadcast from rank 0; torch 2.14 warns that this flag is deprecated, but its
    # replacement still syncs buffers at the start.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(module, broadcast_buffers=False)


def _restart_dead_codes(parts: _Parts, latent: torch.Tensor, seed: int, step: int, processes: Processes) -> int:
    """Move the unused codebook entries (rank 0's choice, on every process) and forget their Adam moments."""
    quantize = parts.model.quantize
    generator = seeded_generator(seed, step, latent.device)
    dead = quantize.restart_dead_codes(latent, generator)
    processes.broadcast(quantize.embedding.weight.data)
    processes.broadcast(dead)
    forget_moments(parts.optimizer, quantize.embedding.weight, dead)
    return int(dead.sum())


def _train_step(
    parts: _Parts,
    training: TokenizerTrainingConfig,
    images: torch.Tensor,
    step: int,
    lpips: LPIPS | None,
    processes: Processes,
) -> dict[str, Any]:
    """One update of the tokenizer (and, once it has started, of the discriminator)."""
    lr = training.lr_at(step)
    optimizers = [parts.optimizer] + ([parts.disc_optimizer] if parts.disc_optimizer else [])
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    adversarial = training.disc_start is not None and step >= training.disc_start
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=training.bf16)
    with autocast:
        output = parts.wrapped(images)
    reconstruction = output.reconstruction.float()
    quantizer = output.quantizer
    terms = {
        "reconstruction": F.mse_loss(reconstruction, images),
        "codebook": quantizer.codebook_loss,
        "commitment": quantizer.commitment_loss,
    }
    if parts.model.config.entropy_loss_ratio > 0:
        terms["entropy"] = quantizer.entropy_loss
    if lpips is not None:
        with autocast:
            terms["perceptual"] = training.perceptual_weight * lpips(reconstruction, images).mean()
    if adversarial:
        # The generator's view: gradients reach the tokenizer through a frozen discriminator.
        parts.discriminator.requires_grad_(False)
        with autocast:
            terms["adversarial"] = training.disc_weight * hinge_generator_loss(parts.discriminator(reconstruction))
        parts.discriminator.requires_grad_(True)
    loss = sum(terms.values())
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), training.grad_clip)
    parts.optimizer.step()
    report = {"loss": loss.item(), **{name: value.item() for name, value in terms.items()}}
    every = training.restart_dead_codes_every
    if every is not None and (step + 1) % every == 0:
        report["restarted_codes"] = _restart_dead_codes(parts, quantizer.latent, training.seed, step, processes)
    if adversarial:
        with autocast:
            real, fake = parts.wrapped_discriminator(images), parts.wrapped_discriminator(reconstruction.detach())
        disc_loss = hinge_discriminator_loss(real.float(), fake.float())
        parts.disc_optimizer.zero_grad(set_to_none=True)
        disc_loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.discriminator.parameters(), training.grad_clip)
        parts.disc_optimizer.step()
        report["discriminator"] = disc_loss.item()
    # PSNR of the batch in [-1, 1] (range 2), a running indication only; evaluation measures it properly.
    mse = terms["reconstruction"].item()
    return {**report, "psnr": 10 * math.log10(4.0 / max(mse, 1e-12)), "grad_norm": grad_norm.item(), "lr": lr}
