"""The vision lab's whole experiment: train tiny ViTs at one grid, one per position encoding and seed; evaluate at larger grids.

`run_experiment` is what ``python -m solutions.vision_lab`` calls. For each placement of the marks in
``config.tasks`` (`solutions.vision_lab.task`; the full run uses ``global`` only, to fit the CPU budget) it

1. trains one `TinyViT` per encoding (`solutions.vision_lab.model.ENCODINGS`) and per seed of
   ``config.seeds`` at the training grid (8 x 8 patches in the full run); a seed fixes both the
   initialisation and the training batches, and all encodings of a seed see the same batches. NoPE is
   trained with the first seed only: no training can lift it above chance (the tests prove it), so more
   seeds would only re-measure the noise of a constant answer;
2. evaluates every method of `METHODS` (a trained model plus a way to handle a larger grid) on the same
   fixed test images at every grid (8, 12, 16 and 24 in the full run): the accuracy of the quadrant label,
   with the marks anywhere on the larger grid, so that their offsets grow with it;
3. does the same on the *probe*: images whose two marks lie in the top-left ``train_grid x train_grid``
   window, so that the marks, their positions and their offsets are exactly those of training and only the
   texture around them grows. The two test sets answer the two meanings of "a larger image": the same scene
   at a higher resolution (distances grow), or more of a scene at the same scale.

The methods are those Heo et al. ("Rotary Position Embedding for Vision Transformer", ECCV 2024, section 4)
compare at higher resolution: ViT's learned table, bilinearly interpolated (Dosovitskiy et al. 2021,
section 3.2), RoPE-Axial and RoPE-Mixed with the larger grid's integer positions, and, as the 2-D analogue
of Position Interpolation, RoPE-Axial with positions scaled by train grid / test grid. RoPE-Mixed with
interpolated positions is one extra row, since it costs nothing to evaluate. NoPE is the floor.

Next to each accuracy the run records two diagnostics: the share of the most frequent predicted label (1 when
a model gives every image the same answer), and the class token's attention on the two marks in every layer
(`class_attention_on_marks`). The class token is not rotated (as in the released rope-vit code), so its score
for a patch depends on the patch's *absolute* position, and this shows how much a larger grid disturbs what
it reads. One seed is not enough: in the development runs, two seeds of the same RoPE model found solutions
that behaved oppositely at a larger grid, and the class token's attention at the training grid told them
apart.

Every number is a list over seeds, in the order of ``config.seeds`` (one entry for NoPE). Jobs run in
``workers`` processes with one thread each, or in this process when ``workers == 1``. Every job seeds its
own generators, so the numbers do not depend on the number of workers or on the order in which jobs finish.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..lab.experiment import run_environment  # the same record of the machine as the text lab's results
from ..lab.train import learning_rate_at  # the lab's schedule: warm-up, then cosine decay (same config fields)
from .model import ENCODINGS, TinyViT, VisionConfig
from .task import TaskConfig, find_marks, make_batch, render, quadrant_label, sample_marks

FORMAT_VERSION = 1
TEST_SETS = {False: "", True: "_probe"}  # in_train_window -> suffix of the result keys
METRICS = ("accuracy", "top_prediction_share", "class_attention_on_marks")


@dataclass(frozen=True)
class Method:
    """One row of the results: a trained model and how it meets a grid other than the training grid."""

    encoding: str
    interpolate: bool
    description: str


METHODS: dict[str, Method] = {
    "nope": Method("nope", False, "no position encoding (the floor: chance)"),
    "learned": Method("learned", True, "learned table of train_grid^2 vectors, bilinearly interpolated (ViT)"),
    "axial": Method("axial", False, "RoPE-Axial, the larger grid's integer cells (extrapolation)"),
    "axial_interp": Method("axial", True, "RoPE-Axial, positions scaled by train_grid / grid (interpolation)"),
    "mixed": Method("mixed", False, "RoPE-Mixed, the larger grid's integer cells (extrapolation)"),
    "mixed_interp": Method("mixed", True, "RoPE-Mixed, positions scaled by train_grid / grid (interpolation)"),
}


@dataclass
class TrainConfig:
    """AdamW with linear warm-up and cosine decay, on fresh batches of the task at the training grid."""

    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-3
    min_learning_rate: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VisionLabConfig:
    """Everything a run depends on. `full_config` and `quick_config` are the two presets of the CLI."""

    model: VisionConfig
    train: TrainConfig
    tasks: dict[str, TaskConfig] = field(default_factory=lambda: {"global": TaskConfig(placement="global")})
    grids: tuple[int, ...] = (8, 12, 16, 24)
    seeds: tuple[int, ...] = (0, 1, 2)  # each: the initialisation and the training batches
    eval_samples: int = 1000
    attention_samples: int = 250  # the first images of each test set, for the class-attention diagnostic
    eval_batch_size: int = 100
    eval_seed: int = 0  # the test images, the same for every seed and method
    quick: bool = False

    @property
    def train_grid(self) -> int:
        return self.model.train_grid

    def seeds_of(self, encoding: str) -> tuple[int, ...]:
        """The seeds an encoding is trained with: all of them, or the first for NoPE (see the module)."""
        return self.seeds[:1] if encoding == "nope" else self.seeds


def full_config() -> VisionLabConfig:
    """The committed run: d = 32, 2 layers of 2 heads of 16, trained 2000 steps of 64 images of 8 x 8, 3 seeds.

    2000 steps because the learned table sits on a plateau at chance for several hundred steps before it
    finds the relation, and some RoPE seeds converge only late (see the chapter). Every model gets the same
    budget. Batches of 64: with 32, the learned table of the ``local`` task had not left the plateau in 2000
    steps. One placement, ``global``, with the probe of marks kept in the training window, covers both
    meanings of a larger image; a second placement would double the run's time. 1000 test images per grid
    and test set keep the evaluation to about a fifth of the run.
    """
    model = VisionConfig(train_grid=8, d_model=32, n_layers=2, n_heads=2, d_ff=64)
    return VisionLabConfig(model=model, train=TrainConfig())


def quick_config() -> VisionLabConfig:
    """A smoke test of the whole pipeline in a few seconds: a 1-layer d = 16 model, grids 4 and 6."""
    model = VisionConfig(train_grid=4, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    train = TrainConfig(steps=30, batch_size=32, warmup_steps=5)
    return VisionLabConfig(model=model, train=train, grids=(4, 6), seeds=(0, 1), eval_samples=64,
                           attention_samples=16, eval_batch_size=64, quick=True)


def model_config(config: VisionLabConfig, placement: str, encoding: str) -> VisionConfig:
    task = config.tasks[placement]
    return VisionConfig(**{**config.model.to_dict(), "encoding": encoding, "vocab_size": task.vocab_size})


# -- training ---------------------------------------------------------------------------------------------
def make_optimizer(model: TinyViT, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on weight matrices only.

    The position table, the class token and RoPE-Mixed's frequencies are not decayed, as in DeiT and the
    released rope-vit code (``no_weight_decay``: pos_embed, cls_token, freqs); nor are biases and LayerNorm.
    """
    def decayed(name: str, parameter: torch.Tensor) -> bool:
        return parameter.dim() == 2 and not name.startswith("positions")

    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decayed(n, p)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in named if not decayed(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def train(model: TinyViT, task: TaskConfig, config: TrainConfig, seed: int = 0, log=None) -> dict:
    """Train ``model`` in place on fresh batches at its training grid; ``{"losses", "accuracies", "seconds"}``.

    The batches are drawn from a generator seeded with ``seed``, so every encoding trained with the same seed
    sees the same images. ``losses`` and ``accuracies`` are the means over every tenth of the steps
    (cross-entropy in nats, and the share of training images labelled right).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, config)
    grid = model.config.train_grid
    model.train()
    start, losses, accuracies, window = time.perf_counter(), [], [], []
    report_every = max(1, config.steps // 10)
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        images, labels = make_batch(task, grid, config.batch_size, generator)  # [B, g, g], [B]
        logits = model(images)  # [B, 4]
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        window.append((loss.item(), (logits.argmax(-1) == labels).float().mean().item()))
        if (step + 1) % report_every == 0 or step + 1 == config.steps:
            losses.append(round(sum(w[0] for w in window) / len(window), 4))
            accuracies.append(round(sum(w[1] for w in window) / len(window), 4))
            window = []
            if log is not None:
                log(step + 1, losses[-1])
    model.eval()
    return {"losses": losses, "accuracies": accuracies, "seconds": round(time.perf_counter() - start, 1)}


# -- evaluation -------------------------------------------------------------------------------------------
def evaluation_images(config: VisionLabConfig, placement: str, grid: int, in_train_window: bool = False):
    """The fixed test set of one placement and grid: ``(images [n, grid, grid], labels [n])``.

    Seeded by (eval_seed, grid, probe), so every method is scored on the same images. With
    ``in_train_window`` the marks are drawn as on the training grid (the top-left ``train_grid`` square)
    and only the texture fills the larger grid.
    """
    task = config.tasks[placement]
    generator = torch.Generator().manual_seed(config.eval_seed * 1_000_003 + grid * 2 + int(in_train_window) + 1)
    if not in_train_window:
        return make_batch(task, grid, config.eval_samples, generator)
    mark_a, mark_b = sample_marks(task, config.train_grid, config.eval_samples, generator)
    return render(task, grid, mark_a, mark_b, generator), quadrant_label(mark_a, mark_b)


@torch.no_grad()
def class_attention_on_marks(model: TinyViT, task: TaskConfig, images: torch.Tensor, interpolate: bool,
                             batch_size: int) -> list[float]:
    """Per layer: the class token's attention on the two marks (their sum), averaged over heads and images.

    On a grid of n patches a class token that ignores content gives the marks 2 / (n + 1) of its attention;
    one that reads them gives them most of it.
    """
    width, totals = images.shape[-1], None
    for chunk in images.split(batch_size):
        attention = model.class_attention(chunk, interpolate)  # [layers, batch, heads, 1 + H * W]
        mark_a, mark_b = find_marks(task, chunk)  # [batch, 2] (row, col) each
        index = torch.stack([1 + m[:, 0] * width + m[:, 1] for m in (mark_a, mark_b)], dim=-1)  # [batch, 2]
        index = index[None, :, None, :].expand(attention.shape[0], -1, attention.shape[2], -1)
        on_marks = attention.gather(-1, index).sum(-1).mean(-1).sum(-1)  # [layers]: summed over images
        totals = on_marks if totals is None else totals + on_marks
    return [round(v, 4) for v in (totals / len(images)).tolist()]


@torch.no_grad()
def accuracy(model: TinyViT, images: torch.Tensor, labels: torch.Tensor, interpolate: bool,
             batch_size: int) -> tuple[float, float]:
    """``(accuracy, top share)``: the share of ``images`` labelled right, and of the most frequent answer.

    A top share of 1 means the model gives every image the same label, whatever it shows.
    """
    predictions = torch.cat([model(chunk, interpolate=interpolate).argmax(-1) for chunk in images.split(batch_size)])
    counts = torch.bincount(predictions, minlength=model.config.num_classes)
    return (predictions == labels).float().mean().item(), counts.max().item() / len(labels)


# -- jobs (run in worker processes or in this one) ---------------------------------------------------------
def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mixed_frequencies(model: TinyViT) -> list:
    """RoPE-Mixed's frequency vectors as nested lists ``[layer][head][theta_row, theta_col][pair]`` (rad/cell)."""
    return [[[[round(v, 5) for v in axis] for axis in head] for head in block.attn.freqs.tolist()]
            for block in model.blocks]


def train_job(config: VisionLabConfig, placement: str, encoding: str, seed: int) -> tuple[dict, dict]:
    """Train one model; returns ``(state_dict, training record)``.

    For RoPE-Mixed the record also holds the frequency vectors before and after training, which say how
    far training moved them.
    """
    torch.set_num_threads(1)
    model = TinyViT(model_config(config, placement, encoding), seed=seed)
    initial = mixed_frequencies(model) if encoding == "mixed" else None
    steps = config.train.steps
    record = train(model, config.tasks[placement], config.train, seed,
                   log=lambda step, loss: _log(f"    {placement:>6} {encoding:>7} seed {seed}: step {step}/{steps}, "
                                               f"loss {loss:.3f}"))
    if initial is not None:
        record["mixed_freqs"] = {"initial": initial, "trained": mixed_frequencies(model)}
    return model.state_dict(), record


def evaluate_job(config: VisionLabConfig, placement: str, encoding: str, seed: int, state: dict) -> dict:
    """Accuracy and diagnostics of every method built on this model, at every grid, on both test sets."""
    torch.set_num_threads(1)
    model = TinyViT(model_config(config, placement, encoding), seed=seed)
    model.load_state_dict(state)
    model.eval()
    start = time.perf_counter()
    scores = {key + suffix: {} for suffix in TEST_SETS.values() for key in METRICS}
    for grid in config.grids:
        for in_window, suffix in TEST_SETS.items():
            images, labels = evaluation_images(config, placement, grid, in_window)
            for name, method in METHODS.items():
                if method.encoding != encoding:
                    continue
                right, top = accuracy(model, images, labels, method.interpolate, config.eval_batch_size)
                reading = class_attention_on_marks(model, config.tasks[placement], images[: config.attention_samples],
                                                   method.interpolate, config.eval_batch_size)
                for key, value in zip(METRICS, (round(right, 4), round(top, 4), reading)):
                    scores[key + suffix].setdefault(name, {})[str(grid)] = value
    scores["seconds"] = round(time.perf_counter() - start, 1)
    return scores


# -- the run ----------------------------------------------------------------------------------------------
def run_experiment(config: VisionLabConfig, workers: int = 2, log=_log) -> dict:
    """Train and evaluate everything; returns the results dictionary that the CLI writes as JSON."""
    start = time.perf_counter()
    placements = list(config.tasks)
    # Longest first (RoPE-Mixed recomputes its tables in every layer; the learned table and NoPE are the
    # cheapest), so that the workers finish together.
    jobs = [(p, e, s) for e in ("mixed", "axial", "learned", "nope") for s in config.seeds_of(e) for p in placements]
    assert {e for _, e, _ in jobs} == set(ENCODINGS)
    total, done = 2 * len(jobs), 0
    states, training, evaluations = {}, {}, {}

    def progress(what: str, seconds: float) -> None:
        nonlocal done
        done += 1
        bar = "#" * round(30 * done / total)
        log(f"[{bar:<30}] {done:>2}/{total} {what} ({seconds:.0f} s); elapsed "
            f"{(time.perf_counter() - start) / 60:.1f} min")

    log(f"vision lab: {len(jobs)} models ({', '.join(placements)} x {', '.join(ENCODINGS)}, seeds "
        f"{list(config.seeds)}), trained at {config.train_grid}x{config.train_grid}, evaluated at "
        f"{list(config.grids)}; {workers} worker(s)")
    if workers == 1:
        for job in jobs:
            states[job], training[job] = train_job(config, *job)
            progress(f"trained {' '.join(map(str, job))}", training[job]["seconds"])
            evaluations[job] = evaluate_job(config, *job, states[job])
            progress(f"evaluated {' '.join(map(str, job))}", evaluations[job]["seconds"])
    else:
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending = {pool.submit(train_job, config, *job): ("train", job) for job in jobs}
            while pending:
                finished, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                for future in finished:
                    kind, job = pending.pop(future)
                    if kind == "train":
                        states[job], training[job] = future.result()
                        progress(f"trained {' '.join(map(str, job))}, final loss {training[job]['losses'][-1]:.3f}",
                                 training[job]["seconds"])
                        pending[pool.submit(evaluate_job, config, *job, states[job])] = ("evaluate", job)
                    else:
                        evaluations[job] = future.result()
                        progress(f"evaluated {' '.join(map(str, job))}", evaluations[job]["seconds"])
    return assemble_results(config, training, evaluations, workers, time.perf_counter() - start)


def assemble_results(config: VisionLabConfig, training: dict, evaluations: dict, workers: int, seconds: float) -> dict:
    """The JSON document: every number keyed by placement, method and grid (a string), then a list over seeds."""
    placements = list(config.tasks)

    def table(key: str) -> dict:
        return {p: {name: {str(g): [evaluations[(p, m.encoding, s)][key][name][str(g)] for s in config.seeds_of(m.encoding)]
                           for g in config.grids}
                    for name, m in METHODS.items()}
                for p in placements}

    return {
        "format_version": FORMAT_VERSION,
        "quick": config.quick,
        "train_grid": config.train_grid,
        "grids": list(config.grids),
        "placements": placements,
        "tasks": {p: config.tasks[p].to_dict() for p in placements},
        "num_classes": config.model.num_classes,
        "chance": 1 / config.model.num_classes,
        "methods": {name: {"encoding": m.encoding, "interpolate": m.interpolate, "description": m.description}
                    for name, m in METHODS.items()},
        "seeds": list(config.seeds),
        "seeds_by_method": {name: list(config.seeds_of(m.encoding)) for name, m in METHODS.items()},
        **{key + suffix: table(key + suffix) for key in METRICS for suffix in TEST_SETS.values()},
        "test_sets": {"": "both marks anywhere on the grid",
                      "_probe": "both marks in the top-left train_grid x train_grid window; only the texture grows"},
        "eval_samples": config.eval_samples,
        "attention_samples": config.attention_samples,
        "eval_seed": config.eval_seed,
        "model": config.model.to_dict(),
        "num_parameters": {e: TinyViT(model_config(config, placements[0], e)).num_parameters() for e in ENCODINGS},
        "train": config.train.to_dict(),
        "training": {p: {e: {str(s): training[(p, e, s)] for s in config.seeds_of(e)} for e in ENCODINGS}
                     for p in placements},
        "evaluation_seconds": {p: {e: {str(s): evaluations[(p, e, s)]["seconds"] for s in config.seeds_of(e)}
                                   for e in ENCODINGS} for p in placements},
        "wall_time_s": round(seconds, 1),
        **run_environment(workers),
    }
