"""Training the Llama image generator on extracted codes (Sec. 2.2 and 3.1 of the paper), resumable exactly.

Next-token cross-entropy over the image tokens, the condition as prefix; AdamW with weight decay on
matrices only (the original's `configure_optimizers`: every parameter of two or more dimensions,
embeddings included), gradient clipping, bf16 autocast, a weight EMA, and condition dropout
(`class_dropout_prob` of the model config) so that classifier-free guidance works at sampling time.
Under torchrun the model is wrapped in DDP; every batch is a pure function of (seed, step).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from llamagen.checkpoints import save
from llamagen.data.batches import step_loader
from llamagen.data.codes import CodesDataset, CodesInfo, CodesOnTheFly
from llamagen.gpt import GPT, GPTConfig
from llamagen.training.common import (
    TrainingRun,
    adamw_decaying_matrices,
    keeping_hyperparameters,
    load_optimizer_state,
    update_ema,
)
from llamagen.training.distributed import Processes, process_group
from llamagen.training.settings import GPTTrainingConfig


@dataclass
class GPTTrainingOutcome:
    model: GPT | None  # what final.safetensors holds: the EMA, or the trained weights (FSDP: None but on rank 0)
    step: int
    finished: bool  # False when a signal stopped the run first; --resume continues it
    trained: GPT | None  # the weights themselves (FSDP: gathered on rank 0 like `model`, None on the others)


def generator_config_for(codes: CodesInfo, base: GPTConfig, text_encoder=None) -> GPTConfig:
    """`base` (a preset) fitted to the codes: their vocabulary, grid and classes, or the text encoder's features."""
    values = base.to_dict()
    values.update(vocab_size=codes.codebook_size, block_size=codes.grid**2)
    if codes.conditioning == "c2i":
        values.update(model_type="c2i", num_classes=len(codes.class_names))
    else:
        _require_text_encoder(text_encoder)
        values.update(model_type="t2i", caption_dim=text_encoder.width, cls_token_num=text_encoder.context_length)
    return GPTConfig.from_dict(values)


def train_gpt(
    model_config: GPTConfig,
    training: GPTTrainingConfig,
    codes: str | Path | CodesDataset | CodesOnTheFly,
    out_dir: str | Path,
    text_encoder=None,
    resume: bool = False,
    show_progress: bool = True,
    command: str | None = None,
    device: str | torch.device | None = None,
    changes: Collection[str] = (),
    alone: bool = False,
) -> GPTTrainingOutcome:
    """Train (or, with `resume`, continue) a generator; the EMA goes to `final.safetensors`.

    `codes`: a codes file (or its `CodesDataset`), or a `CodesOnTheFly` that tokenizes images as they come.

    `model_config` must match the codes (see `generator_config_for`); `text_encoder` (a frozen
    `llamagen.text` encoder) turns the captions of text-conditional codes into prefix features.
    A resumed run must have the settings and data it was trained with, but those named in `changes`
    (`TrainingRun`). `alone`: this process trains by itself even under torchrun (a study's processes each train
    runs of their own).
    """
    dataset = codes if isinstance(codes, CodesDataset | CodesOnTheFly) else CodesDataset(codes, seed=training.seed)
    _check_codes(model_config, dataset.info, text_encoder)
    with process_group(device, alone) as processes:
        run = TrainingRun(out_dir, resume, processes, model_config.to_dict(), training, command,
                          data_description(dataset.info), changes)  # fmt: skip
        parts = _Parts(model_config, training, processes)
        if run.state is not None:
            parts.load(run.state)
        run.start_rng()
        if text_encoder is not None:
            text_encoder = text_encoder.to(processes.device).eval()
        batches = step_loader(dataset, training.batch_size, run.start, training.steps, training.seed, 0,
                              processes.rank, processes.world)  # fmt: skip
        for step, batch in run.steps(batches, show_progress):
            tokens = dataset.tokens(batch, processes.device)  # (B, block_size)
            losses = _train_step(parts, training, tokens, batch, step, text_encoder, processes.device)
            parts.update_ema(training.ema_decay)
            if run.log_due():
                run.log(losses)
            if run.checkpoint_due():
                run.checkpoint(parts.state())
        run.checkpoint(parts.state())
        final = parts.final()
        if run.finished and processes.is_main:
            save(final, run.out_dir / "final.safetensors", metadata=generator_file_metadata(dataset.info, text_encoder))
        # Not the shards under FSDP: they hold the process group, which must be freed with them before exit.
        outcome = GPTTrainingOutcome(final, run.step, run.finished, final if parts.sharded else parts.model.eval())
        del (
            parts
        )  # the DDP or FSDP structures, in reference cycles: closing the group collects them (`Processes.close`)
        return outcome


class _Parts:
    """The model, its EMA (None when ema_decay is 0) and the optimizer; `wrapped` is the model as the step
    calls it: DDP under torchrun, or the model itself, sharded in place, under FSDP."""

    def __init__(self, model_config: GPTConfig, training: GPTTrainingConfig, processes: Processes):
        torch.manual_seed(training.seed)
        self.config, self.processes, self.sharded = model_config, processes, training.fsdp
        self.model = GPT(model_config).to(processes.device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if training.ema_decay > 0 else None
        if self.sharded:
            if not processes.distributed:
                raise ValueError("FSDP shards the model over torchrun's processes: run it under torchrun")
            from torch.distributed.fsdp import fully_shard

            for layer in self.model.layers:  # each block gathers its weights only while it runs
                fully_shard(layer)
            fully_shard(self.model)
        self.optimizer = adamw_decaying_matrices(
            self.model, training.lr, (training.beta1, training.beta2), training.weight_decay
        )
        use_ddp = processes.distributed and not self.sharded
        self.wrapped = DistributedDataParallel(self.model) if use_ddp else self.model

    def state(self) -> dict[str, Any]:
        """The whole training state (under FSDP gathered from every process: all of them must call this)."""
        if self.sharded:
            from torch.distributed.checkpoint import state_dict as dcp

            whole = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
            return {
                "model": dcp.get_model_state_dict(self.model, options=whole),
                "optimizer": dcp.get_optimizer_state_dict(self.model, self.optimizer, options=whole),
            }
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load(self, state: dict[str, Any]) -> None:
        if self.sharded:
            from torch.distributed.checkpoint import state_dict as dcp

            whole = dcp.StateDictOptions(full_state_dict=True)
            dcp.set_model_state_dict(self.model, state["model"], options=whole)
            with keeping_hyperparameters(self.optimizer):
                dcp.set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=whole)
            return
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError("the checkpoint was trained without an EMA (ema_decay 0): resume with --ema-decay 0")
            self.ema.load_state_dict(state["ema"])

    def update_ema(self, decay: float) -> None:
        if self.ema is not None:
            update_ema(self.ema, self.model, decay)

    def final(self) -> GPT | None:
        """The weights to ship: the EMA, or the trained weights (under FSDP gathered into a whole model on the
        first process, None on the others; every process must call this)."""
        if not self.sharded:
            return (self.ema if self.ema is not None else self.model).eval()
        whole = self.state()["model"]
        if not self.processes.is_main:
            return None
        model = GPT(self.config)
        model.load_state_dict(whole)
        return model.eval()


def _check_codes(model_config: GPTConfig, info: CodesInfo, text_encoder) -> None:
    if model_config.vocab_size != info.codebook_size or model_config.block_size != info.grid**2:
        raise ValueError(
            f"the codes are {info.grid}x{info.grid} grids of a {info.codebook_size}-code tokenizer, but the "
            f"generator has block_size {model_config.block_size} and vocab_size {model_config.vocab_size}"
        )
    if model_config.model_type != info.conditioning:
        raise ValueError(f"a {model_config.model_type} generator cannot train on {info.conditioning} codes")
    if info.conditioning == "c2i" and model_config.num_classes != len(info.class_names):
        raise ValueError(f"the codes have {len(info.class_names)} classes, the model {model_config.num_classes}")
    if info.conditioning == "t2i":
        _require_text_encoder(text_encoder)
    elif text_encoder is not None:
        raise ValueError("the codes carry class labels, not captions: a text encoder has nothing to encode")


def _require_text_encoder(text_encoder) -> None:
    if text_encoder is None:
        raise ValueError("the codes carry captions: train with a text encoder (--text-encoder)")


def data_description(info: CodesInfo) -> dict[str, Any]:
    """What tells one training set of codes from another, for a resumed run to compare: their shape, classes
    and how they were made (not the command that trains on them, which a resume changes)."""
    made = {key: value for key, value in info.metadata.items() if key != "command"}
    return {**{key: value for key, value in dataclasses.asdict(info).items() if key != "metadata"}, **made}


def generator_file_metadata(info: CodesInfo, text_encoder=None) -> dict[str, str]:
    """What a generator file records of its training, so that it alone rebuilds a pipeline: its class
    names, the tokenizer that made its codes and the text encoder of its captions."""
    metadata = {"class_names": json.dumps(info.class_names)}
    if "tokenizer" in info.metadata:
        metadata["tokenizer"] = info.metadata["tokenizer"]
    if "command" in info.metadata:
        metadata["codes_command"] = info.metadata["command"]
    if text_encoder is not None:
        metadata["text_encoder"] = text_encoder.source
    return metadata


def _train_step(parts: _Parts, training: GPTTrainingConfig, tokens, batch: dict, step: int, text_encoder, device):
    lr = training.lr_at(step)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    cond_mask = None
    if text_encoder is None:
        cond = batch["label"].to(device)
    else:
        encoded = text_encoder.encode(list(batch["caption"]))
        cond, cond_mask = encoded.features, encoded.mask
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=training.bf16):
        logits = parts.wrapped(tokens[:, :-1], cond, cond_mask)  # (B, block_size, vocab), float32
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), training.grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # under FSDP the norm is a distributed tensor
        grad_norm = grad_norm.full_tensor()
    parts.optimizer.step()
    accuracy = (logits.argmax(-1) == tokens).float().mean()
    return {"loss": loss.item(), "token_accuracy": accuracy.item(), "grad_norm": grad_norm.item(), "lr": lr}
