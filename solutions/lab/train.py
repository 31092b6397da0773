"""Training and fine-tuning of the tiny decoders: AdamW, linear warm-up, cosine decay, a passkey mixture.

Every model of a run sees the same batches in the same order (one seeded generator per run), so the
encodings differ in their position handling only. A fixed share of every batch is synthetic passkey
sequences (`solutions.lab.passkey`) at random depths; the rest are random windows of the standard library's
source. The fine-tunes of Position Interpolation (Chen et al. 2023, section 3.2) and YaRN (Peng et al. 2024,
section 4) continue from the trained RoPE model, with the extension set, on sequences of the longer length.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .corpus import sample_train_windows
from .model import TinyDecoder
from .passkey import training_passkey_batch


@dataclass
class TrainConfig:
    """Optimisation settings: ``steps`` of ``batch_size`` windows of ``length`` bytes each."""

    steps: int = 1000
    batch_size: int = 32
    length: int = 64
    learning_rate: float = 3e-3
    min_learning_rate: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    passkey_fraction: float = 0.25
    passkey_max_statements: int = 3
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_learning_rate`` at the last step."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


def mixed_batch(stream: torch.Tensor, config: TrainConfig, generator: torch.Generator):
    """A batch whose first ``round(passkey_fraction * batch_size)`` rows are passkey sequences."""
    passkeys = round(config.passkey_fraction * config.batch_size)
    parts = []
    if passkeys:
        parts.append(training_passkey_batch(config.length, passkeys, generator, config.passkey_max_statements))
    if passkeys < config.batch_size:
        parts.append(sample_train_windows(stream, config.batch_size - passkeys, config.length, generator))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def make_optimizer(model: TinyDecoder, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on LayerNorm gains or the T5 bias table)."""
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "t5_bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "t5_bias" not in n)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def train(
    model: TinyDecoder,
    stream: torch.Tensor,
    config: TrainConfig,
    progress: Callable[[int, float], None] | None = None,
) -> dict:
    """Train ``model`` in place on ``stream``; returns ``{"losses": [...], "seconds": ...}``.

    ``losses`` holds the mean training loss (nats per byte) of every 10% of the steps. ``progress(step,
    loss)`` is called every few steps.
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    model.train()
    start, losses, window = time.perf_counter(), [], []
    report_every = max(1, config.steps // 10)
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        inputs, targets = mixed_batch(stream, config, generator)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        window.append(loss.item())
        if (step + 1) % report_every == 0 or step + 1 == config.steps:
            losses.append(sum(window) / len(window))
            window = []
            if progress is not None:
                progress(step + 1, losses[-1])
    model.eval()
    return {"losses": [round(x, 4) for x in losses], "seconds": round(time.perf_counter() - start, 1)}
