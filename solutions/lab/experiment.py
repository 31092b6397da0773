"""The lab's whole experiment: train one tiny model per encoding, fine-tune two RoPE extensions, evaluate all.

`run_experiment` is what ``python -m solutions.lab run`` calls. Its plan, for a training length L and an
extension factor s (the longest evaluation length over L, 16 in the full run):

1. Train six models, one per encoding (`solutions.lab.model.ENCODINGS`), on the same batches.
2. Fine-tune two copies of the RoPE model for a few steps on text of length s L, with Position Interpolation
   and with YaRN at factor s (Chen et al. 2023; Peng et al. 2024).
3. Evaluate every method of `methods` (an encoding plus, for RoPE and ALiBi, an extension applied at
   evaluation time) at lengths L, 2L, ..., sL: last-window perplexity and passkey accuracy by depth.

Static extensions (PI, NTK-aware, NTK-by-parts, YaRN, NTK-ALiBi) are set once with the factor s that covers
the longest length, as a deployed extended model would be, and are evaluated at every length with it.
Dynamic NTK instead picks its factor from the current length, ``s' = max(1, l / L)``; so do the two extra
rows "dynamic PI" and "dynamic YaRN" (YaRN paper, section 3.3), which separate what a method does from the
cost of a factor larger than the length needs. YaRN keeps the
released alpha = 1 and beta = 32 (``beta_slow``, ``beta_fast``); see `yarn_params` for what they mean at L.

Jobs run in ``workers`` processes with one thread each; every job seeds its own generators and runs on one
thread, so the numbers do not depend on the number of workers or on the order in which jobs finish.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import pathlib
import platform
import sys
import time
from dataclasses import dataclass, field, replace

import torch

from .corpus import Corpus, load_corpus, validation_windows
from .evaluate import passkey_accuracy, perplexity_by_length
from .model import ENCODINGS, ModelConfig, TinyDecoder
from .train import TrainConfig, train

FORMAT_VERSION = 1


@dataclass
class LabConfig:
    """Everything a run depends on. `full_config` and `quick_config` are the two presets of the CLI."""

    model: ModelConfig
    train: TrainConfig
    fine_tune: TrainConfig
    length_factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    ppl_windows: int = 32
    passkey_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    passkey_trials: int = 10
    eval_batch_size: int = 8
    max_train_bytes: int = 8_000_000
    max_validation_bytes: int = 1_000_000
    model_seed: int = 0
    eval_seed: int = 0
    quick: bool = False
    encodings: tuple[str, ...] = ENCODINGS

    @property
    def train_length(self) -> int:
        return self.model.train_length

    @property
    def lengths(self) -> list[int]:
        return [self.train_length * f for f in self.length_factors]

    @property
    def extension_factor(self) -> float:
        return float(max(self.length_factors))


def full_config() -> LabConfig:
    """The committed run: d=64, 4 layers, 2 heads of 32, trained on 64-byte windows, evaluated to 16x.

    Half of every pre-training batch is passkey sequences: with a quarter, the tiny model had not learned the
    lookup within the budget (see the chapter). The fine-tunes continue on the same mixture at 16x the
    length for 150 steps of two sequences, the same number of bytes per step as pre-training (5% of its steps).
    """
    length = 64
    model = ModelConfig(train_length=length, d_model=64, n_layers=4, n_heads=2, d_ff=256)
    pretrain = TrainConfig(steps=3000, batch_size=32, length=length, warmup_steps=150, passkey_fraction=0.5)
    fine_tune = TrainConfig(
        steps=150, batch_size=2, length=16 * length, learning_rate=5e-4, min_learning_rate=5e-5,
        warmup_steps=15, passkey_fraction=0.5, seed=1,
    )
    return LabConfig(model=model, train=pretrain, fine_tune=fine_tune, ppl_windows=64, passkey_trials=20)


def quick_config() -> LabConfig:
    """A smoke test of the whole pipeline in about a minute: a 2-layer d=32 model, lengths 1x-4x.

    48 bytes is about the shortest window that holds a passkey prompt with some filler.
    """
    length = 48
    model = ModelConfig(train_length=length, d_model=32, n_layers=2, n_heads=2, d_ff=128)
    pretrain = TrainConfig(steps=60, batch_size=16, length=length, warmup_steps=6, passkey_fraction=0.5)
    fine_tune = TrainConfig(
        steps=6, batch_size=2, length=4 * length, learning_rate=5e-4, min_learning_rate=5e-5,
        warmup_steps=2, passkey_fraction=0.5, seed=1,
    )
    return LabConfig(
        model=model, train=pretrain, fine_tune=fine_tune, length_factors=(1, 2, 4), ppl_windows=8,
        passkey_depths=(0.0, 0.5, 1.0), passkey_trials=4, max_train_bytes=400_000, max_validation_bytes=200_000,
        quick=True,
    )


def yarn_params() -> dict:
    """YaRN's ramp: the released defaults ``beta_fast=32``, ``beta_slow=1`` with the released ramp.

    The ramp is set in rotations over the training length, r = L / lambda. With L = 64 and head_dim 32 (the full run) the
    fastest pair turns only L / 2 pi ~ 10 times, so no pair reaches beta = 32. The released ramp works on pair
    *indices* (`solutions.rope_scaling.correction_dim`), clamped at 0: beta = 32 maps to index 0, the fastest
    pair, which is kept, and alpha = 1 to the first pair with less than one rotation, which is interpolated.
    Any beta from about 6 up gives the same frequencies, so the released default already means "keep what
    rotates the most, interpolate what never completes a turn" at this scale. Nothing was tuned.
    """
    return {"beta_fast": 32.0, "beta_slow": 1.0}


@dataclass
class Method:
    """One row of the results: a trained model (by encoding, or a fine-tune) plus an evaluation-time extension."""

    model: str  # an encoding, or "rope_pi_ft" / "rope_yarn_ft"
    extension: str = "default"
    dynamic_factor: bool = False  # Dynamic NTK: factor = max(1, length / L), recomputed per length
    params: dict = field(default_factory=dict)
    description: str = ""


def methods(config: LabConfig) -> dict[str, Method]:
    """The methods evaluated, in the order of the results table."""
    table = {
        "nope": Method("nope", description="no position encoding"),
        "sinusoidal": Method("sinusoidal", description="sinusoidal, added to the embeddings"),
        "learned": Method("learned", description="learned absolute table of train_length rows"),
        "t5": Method("t5", description="T5 relative bias, causal buckets"),
        "alibi": Method("alibi", description="ALiBi"),
        "alibi_ntk": Method("alibi", "ntk_alibi", description="NTK-ALiBi at factor s, no fine-tuning"),
        "rope": Method("rope", description="RoPE, direct extrapolation"),
        "rope_pi": Method("rope", "linear", description="Position Interpolation at factor s, no fine-tuning"),
        "rope_ntk": Method("rope", "ntk", description="NTK-aware at factor s, no fine-tuning"),
        "rope_ntk_by_parts": Method("rope", "ntk_by_parts", params=yarn_params(),
                                    description="NTK-by-parts at factor s, no fine-tuning"),
        "rope_dynamic_ntk": Method("rope", "dynamic", dynamic_factor=True, params={"length_rule": "paper"},
                                   description="Dynamic NTK, factor max(1, l/L), no fine-tuning"),
        "rope_yarn": Method("rope", "yarn", params=yarn_params(), description="YaRN at factor s, no fine-tuning"),
        "rope_dynamic_pi": Method("rope", "linear", dynamic_factor=True,
                                  description="PI with factor max(1, l/L) per length, no fine-tuning"),
        "rope_dynamic_yarn": Method("rope", "yarn", dynamic_factor=True, params=yarn_params(),
                                    description="YaRN with factor max(1, l/L) per length, no fine-tuning"),
        "rope_pi_ft": Method("rope_pi_ft", "linear", description="PI at factor s, fine-tuned at length sL"),
        "rope_yarn_ft": Method("rope_yarn_ft", "yarn", params=yarn_params(),
                               description="YaRN at factor s, fine-tuned at length sL"),
    }
    return {name: m for name, m in table.items() if m.model.split("_")[0] in config.encodings}


FINE_TUNES = {"rope_pi_ft": "rope_pi", "rope_yarn_ft": "rope_yarn"}


def configure(model: TinyDecoder, method: Method, config: LabConfig, length: int | None = None) -> None:
    """Set ``method``'s extension on ``model`` (for Dynamic NTK, for the given evaluation ``length``)."""
    if method.extension == "default":
        model.set_extension()
    elif method.extension == "dynamic":
        # With length_rule="paper" the factor argument is unused: s' = max(1, length / L).
        model.set_extension("dynamic", 1.0, **method.params)
    elif method.dynamic_factor:
        if length is None:
            raise ValueError(f"method {method.extension!r} with a per-length factor needs the evaluation length")
        model.set_extension(method.extension, max(1.0, length / config.train_length), **method.params)
    else:
        model.set_extension(method.extension, config.extension_factor, **method.params)


# -- jobs (run in worker processes) ---------------------------------------------------------------------
_CORPUS: dict[tuple, Corpus] = {}


def run_environment(workers: int) -> dict:
    """What a results file records of the machine that produced it, so a reader can judge its timings.

    Every job runs with one torch thread (``threads_per_worker``) in one of ``workers`` processes.
    """
    return {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads_per_worker": 1,
        "workers": workers,
        "cpu_count": multiprocessing.cpu_count(),
    }


def _corpus(config: LabConfig) -> Corpus:
    key = (config.max_train_bytes, config.max_validation_bytes)
    if key not in _CORPUS:
        _CORPUS[key] = load_corpus(config.max_train_bytes, config.max_validation_bytes)
    return _CORPUS[key]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_job(config: LabConfig, encoding: str) -> tuple[dict, dict]:
    """Train the model of one encoding; returns ``(state_dict, training record)``."""
    torch.set_num_threads(1)
    torch.manual_seed(config.model_seed)
    model = TinyDecoder(replace(config.model, encoding=encoding))
    stream = _corpus(config).train_stream()
    record = train(model, stream, config.train,
                   progress=lambda step, loss: _log(f"    {encoding:>10}: step {step}/{config.train.steps}, loss {loss:.3f}"))
    return model.state_dict(), record


def fine_tune_job(config: LabConfig, name: str, rope_state: dict) -> tuple[dict, dict]:
    """Fine-tune the trained RoPE model with the extension of ``FINE_TUNES[name]`` at the long length."""
    torch.set_num_threads(1)
    model = TinyDecoder(replace(config.model, encoding="rope"))
    model.load_state_dict(rope_state)
    configure(model, methods(config)[FINE_TUNES[name]], config)
    stream = _corpus(config).train_stream()
    record = train(model, stream, config.fine_tune,
                   progress=lambda step, loss: _log(f"    {name:>10}: step {step}/{config.fine_tune.steps}, loss {loss:.3f}"))
    return model.state_dict(), record


def evaluate_job(config: LabConfig, name: str, state: dict) -> dict:
    """Perplexity and passkey accuracy of one method at every length."""
    torch.set_num_threads(1)
    method = methods(config)[name]
    encoding = "rope" if method.model in FINE_TUNES else method.model
    model = TinyDecoder(replace(config.model, encoding=encoding))
    model.load_state_dict(state)
    model.eval()
    windows = validation_windows(_corpus(config), config.ppl_windows, max(config.lengths), seed=config.eval_seed)
    start = time.perf_counter()
    ppl, exact, digits, errors = {}, {}, {}, []
    for length in config.lengths:  # one length at a time, so that Dynamic NTK can pick its factor
        configure(model, method, config, length)
        length_ppl, ppl_error = perplexity_by_length(model, windows, config.train_length, [length],
                                                     config.eval_batch_size)
        length_exact, length_digits, key_error = passkey_accuracy(
            model, [length], list(config.passkey_depths), config.passkey_trials, config.eval_seed,
            config.eval_batch_size)
        ppl.update(length_ppl)
        exact.update(length_exact)
        digits.update(length_digits)
        errors += [e for e in (ppl_error, key_error) if e and e not in errors]
    return {"ppl": ppl, "passkey_exact": exact, "passkey_digits": digits,
            "error": errors[0] if errors else None, "seconds": round(time.perf_counter() - start, 1)}


# -- the run ----------------------------------------------------------------------------------------------
def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if len(values) else None


def _round(value, digits=4):
    return None if value is None else round(value, digits)


def save_checkpoints(folder, config: LabConfig, states: dict) -> None:
    """Write each trained model as ``folder/<name>.pt``: ``{"config": ModelConfig fields, "state_dict": ...}``."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, state in states.items():
        encoding = "rope" if name in FINE_TUNES else name
        torch.save({"config": replace(config.model, encoding=encoding).to_dict(), "state_dict": state},
                   folder / f"{name}.pt")


def load_checkpoint(path) -> TinyDecoder:
    """A `TinyDecoder` from a file written by `save_checkpoints`, in evaluation mode."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = TinyDecoder(ModelConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def run_experiment(config: LabConfig, workers: int = 2, log=_log, checkpoints=None) -> dict:
    """Run the whole plan and return the results dictionary that the CLI writes as JSON.

    With ``checkpoints`` (a folder), the eight trained models are also saved there (`save_checkpoints`).
    """
    start = time.perf_counter()
    table = methods(config)
    encodings = [e for e in ("rope",) + tuple(config.encodings) if e in config.encodings]
    encodings = list(dict.fromkeys(encodings))  # RoPE first: its fine-tunes wait on it
    fine_tunes = [name for name in FINE_TUNES if name in table]
    total_jobs = len(encodings) + len(fine_tunes) + len(table)
    done = 0
    states, training, evaluations = {}, {}, {}

    def progress(what: str, seconds: float) -> None:
        nonlocal done
        done += 1
        elapsed = time.perf_counter() - start
        bar = "#" * round(30 * done / total_jobs)
        log(f"[{bar:<30}] {done:>2}/{total_jobs} {what} ({seconds:.0f} s); elapsed {elapsed / 60:.1f} min")

    log(f"lab run: {len(encodings)} models, {len(fine_tunes)} fine-tunes, {len(table)} methods x "
        f"{len(config.lengths)} lengths {config.lengths}; {workers} worker(s)")
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(train_job, config, e): ("train", e) for e in encodings}

        def submit_evaluations(model_name: str) -> None:
            for name, method in table.items():
                if method.model == model_name:
                    pending[pool.submit(evaluate_job, config, name, states[model_name])] = ("evaluate", name)

        while pending:
            finished, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for future in finished:
                kind, name = pending.pop(future)
                result = future.result()
                if kind in ("train", "fine_tune"):
                    states[name], training[name] = result
                    progress(f"{'trained' if kind == 'train' else 'fine-tuned'} {name}, final loss "
                             f"{training[name]['losses'][-1]:.3f}", training[name]["seconds"])
                    if name == "rope":
                        for ft in fine_tunes:
                            pending[pool.submit(fine_tune_job, config, ft, states["rope"])] = ("fine_tune", ft)
                    submit_evaluations(name)
                else:
                    evaluations[name] = result
                    progress(f"evaluated {name}", result["seconds"])

    if checkpoints is not None:
        save_checkpoints(checkpoints, config, states)
    corpus = _corpus(config)
    return assemble_results(config, table, training, evaluations, corpus, workers, time.perf_counter() - start)


def assemble_results(config, table, training, evaluations, corpus, workers, seconds) -> dict:
    """The JSON document: every number keyed by method and then by length (as a string)."""
    depth_key = {d: f"{d:g}" for d in config.passkey_depths}
    ppl, passkey, by_depth, digit_accuracy, errors = {}, {}, {}, {}, {}
    for name in table:
        result = evaluations[name]
        ppl[name] = {str(l): _round(result["ppl"][l]) for l in config.lengths}
        by_depth[name] = {str(l): {depth_key[d]: _round(result["passkey_exact"][l][d]) for d in config.passkey_depths}
                          for l in config.lengths}
        # _mean skips the None of a length the model cannot run at, and is None when every depth is.
        passkey[name] = {str(l): _round(_mean(result["passkey_exact"][l].values())) for l in config.lengths}
        digit_accuracy[name] = {str(l): _round(_mean(result["passkey_digits"][l].values())) for l in config.lengths}
        errors[name] = result["error"]
    return {
        "format_version": FORMAT_VERSION,
        "quick": config.quick,
        "train_length": config.train_length,
        "lengths": config.lengths,
        "extension_factor": config.extension_factor,
        "passkey_depths": [depth_key[d] for d in config.passkey_depths],
        "methods": {name: {"model": m.model, "extension": m.extension,
                           "factor": ("max(1, length / train_length)" if m.dynamic_factor
                                      else (config.extension_factor if m.extension != "default" else 1.0)),
                           "params": m.params, "fine_tuned": m.model in FINE_TUNES, "description": m.description}
                    for name, m in table.items()},
        "ppl": ppl,
        "passkey": passkey,
        "passkey_by_depth": by_depth,
        "passkey_digit_accuracy": digit_accuracy,
        "errors": errors,
        "seeds": {"model_init": config.model_seed, "train_data": config.train.seed,
                  "fine_tune_data": config.fine_tune.seed, "evaluation": config.eval_seed},
        "steps": {"train": config.train.steps, "fine_tune": config.fine_tune.steps},
        "model": config.model.to_dict(),
        "num_parameters": TinyDecoder(config.model).num_parameters(),
        "train": config.train.to_dict(),
        "fine_tune": config.fine_tune.to_dict(),
        "evaluation": {"ppl_windows": config.ppl_windows, "scored_bytes_per_window": config.train_length,
                       "passkey_trials_per_depth": config.passkey_trials},
        "training": {name: training[name] for name in sorted(training)},
        "evaluation_seconds": {name: evaluations[name]["seconds"] for name in table},
        "corpus": {"source": "Python standard library *.py (sysconfig stdlib path)",
                   "train_files": len(corpus.train_files), "validation_files": len(corpus.validation_files),
                   "train_bytes": corpus.train_bytes, "validation_bytes": corpus.validation_bytes},
        "wall_time_s": round(seconds, 1),
        **run_environment(workers),
    }
