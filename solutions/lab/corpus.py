"""A byte-level corpus that needs no download: the Python standard library's own source files.

The files are found with ``sysconfig.get_paths()["stdlib"]`` and read as raw bytes (vocabulary 256), so the
lab runs offline on any machine with Python. Three rules keep the corpus deterministic and robust to a
different Python patch version:

* the file list is sorted by relative path, and folders that vary by installation (``site-packages``) or that
  hold unusual text (the test suite, generated codec tables, IDLE, 2to3, demos, pydoc's data) are skipped;
* the train/validation split is by *file*, decided by a CRC-32 hash of the file's relative path, so one file's
  assignment never depends on which other files exist;
* every file is cut at ``max_file_bytes`` and each split at a fixed byte cap, taken in path order.

A patch release that edits a few files changes a few bytes, not the split or the shape of any batch.
"""

from __future__ import annotations

import os
import pathlib
import sysconfig
import zlib
from dataclasses import dataclass, field

import torch

SKIPPED_FOLDERS = frozenset({
    "site-packages", "dist-packages", "__pycache__",  # installed third-party code varies by machine
    "test", "tests", "idlelib", "lib2to3", "turtledemo", "encodings", "pydoc_data",
})
VALIDATION_PERCENT = 10


def stdlib_root() -> pathlib.Path:
    """The folder of the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``)."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def list_source_files(root: pathlib.Path | str | None = None) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of the ``*.py`` files the corpus uses."""
    root = pathlib.Path(root) if root is not None else stdlib_root()
    paths = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS]  # prune the walk
        relative = pathlib.Path(folder).relative_to(root)
        paths += [(relative / name).as_posix() for name in names if name.endswith(".py")]
    return sorted(paths)


def is_validation_file(relative_path: str, validation_percent: int = VALIDATION_PERCENT) -> bool:
    """Whether a file belongs to the validation split: ``crc32(path) % 100 < validation_percent``.

    The decision depends on the path alone, so it is the same on every machine and every Python version.
    """
    return zlib.crc32(relative_path.encode("utf-8")) % 100 < validation_percent


@dataclass
class Corpus:
    """The two splits as lists of documents (``uint8`` tensors, one per file) and their file names."""

    train_files: list[str]
    validation_files: list[str]
    train_documents: list[torch.Tensor] = field(repr=False)
    validation_documents: list[torch.Tensor] = field(repr=False)

    @property
    def train_bytes(self) -> int:
        return sum(len(d) for d in self.train_documents)

    @property
    def validation_bytes(self) -> int:
        return sum(len(d) for d in self.validation_documents)

    def train_stream(self) -> torch.Tensor:
        """All training documents joined by a blank line, as one ``uint8`` tensor to sample windows from."""
        separator = torch.tensor(list(b"\n\n"), dtype=torch.uint8)
        pieces = []
        for document in self.train_documents:
            pieces += [document, separator]
        return torch.cat(pieces)


def load_corpus(
    max_train_bytes: int = 8_000_000,
    max_validation_bytes: int = 1_000_000,
    max_file_bytes: int = 65_536,
    root: pathlib.Path | str | None = None,
) -> Corpus:
    """Read the standard library's sources into a `Corpus` with a fixed split by file.

    Files are visited in sorted path order; each contributes its first ``max_file_bytes`` bytes to its split
    until that split holds ``max_train_bytes`` / ``max_validation_bytes`` (the file that crosses the cap is
    cut there). Empty files are skipped.
    """
    root = pathlib.Path(root) if root is not None else stdlib_root()
    caps = {True: max_validation_bytes, False: max_train_bytes}
    files: dict[bool, list[str]] = {True: [], False: []}
    documents: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    used = {True: 0, False: 0}
    for relative in list_source_files(root):
        split = is_validation_file(relative)
        room = min(caps[split] - used[split], max_file_bytes)
        if room <= 0:
            continue
        data = (root / relative).read_bytes()[:room]
        if not data:
            continue
        files[split].append(relative)
        documents[split].append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        used[split] += len(data)
    if not documents[False] or not documents[True]:
        raise RuntimeError(f"found no usable Python sources under {root} for one of the splits")
    return Corpus(files[False], files[True], documents[False], documents[True])


def sample_train_windows(stream: torch.Tensor, batch_size: int, length: int, generator: torch.Generator):
    """``(inputs, targets)``, each ``[batch_size, length]`` int64: random windows of the training stream."""
    starts = torch.randint(0, len(stream) - length - 1, (batch_size,), generator=generator)
    windows = torch.stack([stream[s : s + length + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]


def validation_windows(corpus: Corpus, count: int, length: int, seed: int = 0) -> torch.Tensor:
    """``[count, length + 1]`` int64 windows, each inside one validation file, chosen with a fixed seed.

    Only files with at least ``length + 1`` bytes qualify; files and offsets are drawn with ``seed``. The
    perplexity evaluation cuts every length from the *end* of these windows, so that all lengths score the
    same target bytes (see `solutions.lab.evaluate.perplexity_by_length`).
    """
    long_enough = [d for d in corpus.validation_documents if len(d) >= length + 1]
    if not long_enough:
        raise ValueError(f"no validation file has {length + 1} bytes; lower the longest evaluation length")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        document = long_enough[int(torch.randint(len(long_enough), (1,), generator=generator))]
        start = int(torch.randint(len(document) - length, (1,), generator=generator))
        rows.append(document[start : start + length + 1])
    return torch.stack(rows).long()
