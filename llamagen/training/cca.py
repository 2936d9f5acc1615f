"""Condition contrastive alignment (CCA; Chen, Su, Sun & Zhu 2024, "Toward Guidance-Free AR Visual Generation via
Condition Contrastive Alignment", arXiv 2410.09347): fine-tune a class-conditional generator so that sampling
without guidance draws what guided sampling drew.

Guidance samples from p(x|c) (p(x|c) / p(x))^(s-1), which needs the unconditional model beside the conditional
one at every token. CCA moves that tilt into the weights (Sec. 3): a frozen copy of the pretrained model is the
reference, and each image x of a batch is scored with its own class c (a positive) and with the next row's
class c- (a negative). With gap(x, c) = log p_model(x|c) - log p_reference(x|c), summed over the image's tokens,
the loss is (Eq. 10)

    -log sigmoid(beta * gap(x, c)) - lambda * log sigmoid(-beta * gap(x, c-)),

which raises matched pairs and lowers mismatched ones relative to the reference. It is noise-contrastive
estimation's loss, whose optimum is beta * gap(x, c) = log p(x|c) / p(x) - log lambda: the fine-tuned model then
samples p(x|c) (p(x|c) / p(x))^(1 / beta), up to normalisation, which is guidance at scale 1 + 1 / beta. The
paper's beta 0.02 and lambda 1000 are its choices for the published ImageNet models; beta 1 aims at scale 2.

A share of the rows (`null_share`) carry the null class on both sides and count as positives, as does a
negative whose class happens to be the row's own, so that the null class keeps modelling p(x) and guided
sampling still works after. The loss is divided by max(lambda, 1) so that the learning
rate means the same whatever lambda.

The fine-tune runs the generator without dropout, as its reference: dropout in one of the two would read as a
gap (about 11 nats an image for shapes-c2i) that the loss would chase. Without it, the gaps start at zero, and
which rows are null is the loss's business, not the class embedding's dropout.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from pathlib import Path

import torch
import torch.nn.functional as F

from llamagen.checkpoints import save
from llamagen.data.batches import step_loader
from llamagen.data.codes import CodesDataset
from llamagen.gpt import GPT
from llamagen.training.common import TrainingRun, adamw_decaying_matrices, load_optimizer_state, update_ema
from llamagen.training.distributed import process_group
from llamagen.training.gpt import data_description, generator_file_metadata
from llamagen.training.settings import CCATrainingConfig


def image_log_likelihood(gpt: GPT, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(tokens | class) of each image, summed over its tokens: (B,) in nats."""
    logits = gpt(tokens[:, :-1], labels)
    return logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(-1)


def cca_loss(positive_gap: torch.Tensor, negative_gap: torch.Tensor, negative_is_positive: torch.Tensor,
             beta: float, cca_lambda: float) -> torch.Tensor:  # fmt: skip
    """The loss of Eq. 10 from the gaps (model minus reference log-likelihood, (B,) each); where
    `negative_is_positive` (a null row, or a negative class equal to the row's own) the second term counts the
    pair as a positive, with weight 1."""
    sign = torch.where(negative_is_positive, 1.0, -1.0)
    weight = torch.where(negative_is_positive, 1.0, cca_lambda)
    loss = -F.logsigmoid(beta * positive_gap).mean() - (weight * F.logsigmoid(sign * beta * negative_gap)).mean()
    return loss / max(cca_lambda, 1.0)


def finetune_cca(pretrained: GPT, training: CCATrainingConfig, codes: str | Path | CodesDataset, out_dir: str | Path,
                 resume: bool = False, show_progress: bool = True, command: str | None = None,
                 changes: Collection[str] = ()) -> tuple[GPT, int, bool]:  # fmt: skip
    """Fine-tune the class-conditional `pretrained` with CCA on `codes` (the data it was trained on) into
    `out_dir` (resumable as every training run); the weights go to `final.safetensors`. Returns the model
    (the EMA where there is one), the steps done and whether the run finished."""
    config = pretrained.config
    if config.model_type != "c2i" or not pretrained.cls_embedding.has_null_class:
        raise ValueError("CCA fine-tunes a class-conditional generator with a null class (trained for guidance)")
    dataset = codes if isinstance(codes, CodesDataset) else CodesDataset(codes, seed=training.seed)
    if dataset.info.conditioning != "c2i" or len(dataset.info.class_names) != config.num_classes:
        raise ValueError(f"CCA needs the generator's class-labelled codes ({config.num_classes} classes)")
    with process_group(pretrained.device) as processes:
        if processes.distributed:
            raise ValueError("CCA fine-tuning runs in one process")
        run = TrainingRun(out_dir, resume, processes, config.to_dict(), training, command,
                          data_description(dataset.info), changes)  # fmt: skip
        device = processes.device
        reference = copy.deepcopy(pretrained).to(device).eval().requires_grad_(False)
        model = copy.deepcopy(pretrained).to(device).float().eval().requires_grad_(True)  # no dropout
        ema = copy.deepcopy(model).eval().requires_grad_(False) if training.ema_decay > 0 else None
        optimizer = adamw_decaying_matrices(model, training.lr, (training.beta1, training.beta2),
                                            training.weight_decay)  # fmt: skip
        if run.state is not None:
            model.load_state_dict(run.state["model"])
            load_optimizer_state(optimizer, run.state["optimizer"])
            if ema is not None:
                ema.load_state_dict(run.state["ema"])
        run.start_rng()
        batches = step_loader(dataset, training.batch_size, run.start, training.steps, training.seed)
        null = config.num_classes
        for step, batch in run.steps(batches, show_progress):
            tokens = dataset.tokens(batch, device)
            labels = batch["label"].to(device)
            nulled = torch.rand(len(labels), device=device) < training.null_share
            labels = torch.where(nulled, null, labels)
            negatives = torch.where(nulled, null, labels.roll(-1))  # the next row's class: no draw to bias
            both = torch.cat([labels, negatives])
            twice = torch.cat([tokens, tokens])
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=training.bf16):
                reference_logp = image_log_likelihood(reference, twice, both)
            for group in optimizer.param_groups:
                group["lr"] = training.lr_at(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=training.bf16):
                gap = image_log_likelihood(model, twice, both) - reference_logp
            positive_gap, negative_gap = gap.chunk(2)
            loss = cca_loss(positive_gap, negative_gap, nulled | (negatives == labels), training.beta,
                            training.cca_lambda)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
            optimizer.step()
            if ema is not None:
                update_ema(ema, model, training.ema_decay)
            if run.log_due():
                matched = ~(nulled | (negatives == labels))
                run.log({"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": training.lr_at(step),
                         "positive_gap": positive_gap.mean().item(),
                         "negative_gap": negative_gap[matched].mean().item() if matched.any() else 0.0})  # fmt: skip
            if run.checkpoint_due():
                run.checkpoint(_state(model, optimizer, ema))
        run.checkpoint(_state(model, optimizer, ema))
        final = (ema if ema is not None else model).eval()
        if run.finished:
            save(final, run.out_dir / "final.safetensors", metadata=generator_file_metadata(dataset.info))
        return final, run.step, run.finished


def _state(model: GPT, optimizer, ema: GPT | None) -> dict:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state
