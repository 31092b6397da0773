"""The evaluation lab: tiny byte-level language models trained on the CPU, measured beyond their training length.

One file per idea, in the order of a run:

* `corpus`: the Python standard library's sources as a byte-level corpus, split by file (no download);
* `passkey`: the passkey-retrieval prompts (Mohtashami and Jaggi 2023), at any length and depth;
* `model`: `TinyDecoder`, a small GPT whose position encoding is chosen by name, with any extension method;
* `train`: AdamW training and the short fine-tunes of PI and YaRN;
* `evaluate`: last-window perplexity by length, and passkey accuracy by length and depth;
* `experiment`: the whole plan, and the full and quick presets;
* ``python -m solutions.lab run --out FILE [--quick]``: the command line.

The methods come from the rest of `solutions` and are never re-implemented here.
"""

from .corpus import Corpus, list_source_files, load_corpus, stdlib_root, validation_windows
from .evaluate import last_window_nll, passkey_accuracy, passkey_digits_correct, perplexity_by_length
from .experiment import LabConfig, full_config, methods, quick_config, run_experiment
from .model import ENCODINGS, ModelConfig, TinyDecoder
from .passkey import passkey_batch, passkey_sequence
from .train import TrainConfig, train

__all__ = [
    "Corpus", "list_source_files", "load_corpus", "stdlib_root", "validation_windows",
    "last_window_nll", "passkey_accuracy", "passkey_digits_correct", "perplexity_by_length",
    "LabConfig", "full_config", "methods", "quick_config", "run_experiment",
    "ENCODINGS", "ModelConfig", "TinyDecoder",
    "passkey_batch", "passkey_sequence",
    "TrainConfig", "train",
]
