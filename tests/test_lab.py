"""The evaluation lab (`solutions.lab`): corpus, passkey prompts, model, evaluations, and the quick run end to end."""

import json
import math
import subprocess
import sys
import pathlib

import pytest
import torch

from solutions import alibi_bias, alibi_slopes, reference_attention
from solutions.lab import corpus as corpus_module
from solutions.lab.corpus import is_validation_file, list_source_files, load_corpus, validation_windows
from solutions.lab.evaluate import last_window_nll, passkey_accuracy, perplexity_by_length
from solutions.lab.experiment import methods, quick_config
from solutions.lab.model import ENCODINGS, ModelConfig, TinyDecoder
from solutions.lab.passkey import FILLER, KEY_DIGITS, QUESTION, STATEMENT, passkey_batch, passkey_sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(train_length=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, t5_num_buckets=8)


@pytest.fixture(scope="module")
def small_corpus():
    return load_corpus(max_train_bytes=200_000, max_validation_bytes=100_000)


# -- corpus -----------------------------------------------------------------------------------------------
def test_file_list_is_sorted_relative_and_skips_installed_packages():
    files = list_source_files()
    assert files == sorted(files) and len(files) > 100
    assert all(f.endswith(".py") and not f.startswith("/") for f in files)
    assert not any(set(f.split("/")[:-1]) & corpus_module.SKIPPED_FOLDERS for f in files)


def test_split_is_by_file_deterministic_and_disjoint(small_corpus):
    again = load_corpus(max_train_bytes=200_000, max_validation_bytes=100_000)
    assert again.train_files == small_corpus.train_files
    assert again.validation_files == small_corpus.validation_files
    assert all(torch.equal(a, b) for a, b in zip(again.validation_documents, small_corpus.validation_documents))
    assert not set(small_corpus.train_files) & set(small_corpus.validation_files)
    assert all(is_validation_file(f) for f in small_corpus.validation_files)
    assert not any(is_validation_file(f) for f in small_corpus.train_files)
    # The split depends on the path alone, and holds roughly 10% of the files (no exact counts: they vary
    # between Python patch versions).
    share = sum(map(is_validation_file, list_source_files())) / len(list_source_files())
    assert 0.04 < share < 0.2
    assert is_validation_file("json/decoder.py") == is_validation_file("json/decoder.py")


def test_caps_are_respected(small_corpus):
    assert small_corpus.train_bytes <= 200_000 and small_corpus.validation_bytes <= 100_000
    capped = load_corpus(max_train_bytes=50_000, max_validation_bytes=20_000, max_file_bytes=1000)
    assert all(len(d) <= 1000 for d in capped.train_documents + capped.validation_documents)
    assert capped.train_files == sorted(capped.train_files), "files are taken in path order"


def test_validation_windows_are_fixed_and_inside_one_file(small_corpus):
    windows = validation_windows(small_corpus, 6, 100, seed=3)
    assert windows.shape == (6, 101) and windows.dtype == torch.long
    assert torch.equal(windows, validation_windows(small_corpus, 6, 100, seed=3))
    documents = [bytes(d.tolist()) for d in small_corpus.validation_documents]
    assert all(any(bytes(w.tolist()) in d for d in documents) for w in windows)


# -- passkey ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [24, 64, 300])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_passkey_sequence_layout(length, depth):
    sequence, key_start = passkey_sequence(length, depth, "48213", filler_offset=17)
    text = sequence.decode()
    assert len(sequence) == length + 1
    assert text.endswith(QUESTION + "48213")
    assert text[key_start : key_start + 5] == "48213"
    assert sum(c.isdigit() for c in text) == 10, "the key (twice) is the only number"
    assert text.count(QUESTION) == 2, "the marker appears once in the statement and once in the question"
    filler_length = length + 1 - len(STATEMENT.format(key="48213")) - len(QUESTION) - 5
    assert text.index(STATEMENT.format(key="48213")) == round(depth * filler_length)


def test_passkey_depth_extremes_and_errors():
    start, _ = passkey_sequence(64, 0.0, "12345")
    end, _ = passkey_sequence(64, 1.0, "12345")
    assert start.decode().startswith("KEY=12345. ")
    assert end.decode().endswith("KEY=12345. KEY=12345")
    with pytest.raises(ValueError, match="at least"):
        passkey_sequence(15, 0.5, "12345")
    with pytest.raises(ValueError, match="depth"):
        passkey_sequence(64, 1.5, "12345")
    assert not any(c.isdigit() for c in FILLER) and QUESTION not in FILLER


def test_passkey_batch_answers_are_the_hidden_keys():
    generator = torch.Generator().manual_seed(0)
    inputs, targets = passkey_batch(80, [0.0, 0.5, 1.0], generator)
    assert inputs.shape == targets.shape == (3, 80)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    for row_in, row_target in zip(inputs, targets):
        answer = bytes(row_target[-KEY_DIGITS:].tolist()).decode()
        assert answer.isdigit() and len(answer) == KEY_DIGITS
        assert STATEMENT.format(key=answer) in bytes(row_in.tolist()).decode()
    again = passkey_batch(80, [0.0, 0.5, 1.0], torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs), "the same seed gives the same prompts"


# -- evaluation ---------------------------------------------------------------------------------------------
class BigramModel(torch.nn.Module):
    """Logits from the current byte alone: a model that ignores all earlier context."""

    def __init__(self):
        super().__init__()
        self.table = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))

    def forward(self, idx):
        return self.table[idx]


class FirstByteModel(BigramModel):
    """Logits that depend on the first byte it reads: longer context changes them."""

    def forward(self, idx):
        return self.table[idx] + self.table[idx[:, :1]]


def test_a_model_that_ignores_context_scores_the_same_at_every_length(small_corpus):
    windows = validation_windows(small_corpus, 5, 128)
    ppl, error = perplexity_by_length(BigramModel(), windows, 16, [16, 32, 64, 128], batch_size=2)
    assert error is None and len(set(ppl.values())) == 1, ppl
    # ... and the scored bytes are the same: the perplexity is that of the last 16 bytes of each window.
    table = BigramModel().table
    nll = torch.nn.functional.cross_entropy(table[windows[:, -17:-1]].flatten(0, 1), windows[:, -16:].flatten())
    assert ppl[16] == pytest.approx(math.exp(nll.item()), rel=1e-5)
    moving, _ = perplexity_by_length(FirstByteModel(), windows, 16, [16, 32, 64, 128])
    assert len(set(moving.values())) > 1, "a model that reads its context does change with length"


def test_last_window_nll_rejects_impossible_lengths(small_corpus):
    windows = validation_windows(small_corpus, 2, 32)
    with pytest.raises(ValueError):
        last_window_nll(BigramModel(), windows, 64, 16)
    with pytest.raises(ValueError):
        last_window_nll(BigramModel(), windows, 8, 16)


def test_learned_encoding_past_its_table_is_a_recorded_error_not_a_crash(small_corpus):
    model = TinyDecoder(ModelConfig(encoding="learned", **SMALL)).eval()
    with pytest.raises(ValueError, match="rows 0 .. 15 only"):
        model(torch.zeros(1, 17, dtype=torch.long))
    windows = validation_windows(small_corpus, 2, 64)
    ppl, error = perplexity_by_length(model, windows, 16, [16, 32, 64])
    assert ppl[16] is not None and ppl[32] is None and ppl[64] is None
    assert "cannot extrapolate" in error
    exact, digits, error = passkey_accuracy(model, [40, 41], [0.0, 1.0], trials=2)
    assert error is not None and exact[40] == {0.0: None, 1.0: None} and digits[41][1.0] is None


def test_passkey_accuracy_is_one_for_an_oracle_and_zero_for_a_constant():
    class Oracle(torch.nn.Module):
        def forward(self, idx):  # reads the key from the prompt: every answer digit is the argmax
            logits = torch.zeros(*idx.shape, 256)
            for row, sequence in enumerate(idx):
                text = bytes(sequence.tolist()).decode()
                key = text[text.index(QUESTION) + len(QUESTION) :][:KEY_DIGITS]
                logits[row, -KEY_DIGITS:, :] = 0
                for i, digit in enumerate(key):
                    logits[row, -KEY_DIGITS + i, ord(digit)] = 1.0
            return logits

    exact, digits, error = passkey_accuracy(Oracle(), [48, 96], [0.0, 0.5, 1.0], trials=3)
    assert error is None and all(v == 1.0 for per_depth in exact.values() for v in per_depth.values())
    exact, _, _ = passkey_accuracy(BigramModel(), [48], [0.5], trials=3)
    assert exact[48][0.5] == 0.0


# -- model --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_runs_and_is_causal(encoding):
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(encoding=encoding, **SMALL)).eval()
    idx = torch.randint(0, 256, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 256) and torch.isfinite(logits).all()
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    torch.testing.assert_close(model(changed)[:, :10], logits[:, :10])


@pytest.mark.parametrize("encoding", ["alibi", "t5", "rope"])
def test_sdpa_with_a_float_mask_equals_the_reference_attention(encoding):
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(encoding=encoding, **SMALL)).eval()
    if encoding == "t5":
        torch.nn.init.normal_(model.t5_bias.bias_table.weight)
    attention, length = model.blocks[0].attn, 12
    x = torch.randn(2, length, SMALL["d_model"])
    mask, cos_sin = model.attention_bias(length), model.rope_cos_sin(length) if encoding == "rope" else None
    fast = attention(x, mask, cos_sin)
    q, k, v = attention.qkv(x).view(2, length, 3, 2, 8).permute(2, 0, 3, 1, 4)
    bias = None
    if encoding == "alibi":
        bias = alibi_bias(alibi_slopes(2), length)
    elif encoding == "t5":
        bias = model.t5_bias(length)
    else:
        from solutions import apply_rope

        q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
    slow = reference_attention(q, k, v, bias=bias, causal=True)
    torch.testing.assert_close(fast, attention.out(slow.transpose(1, 2).reshape(2, length, -1)))


def test_extensions_are_validated_and_dynamic_ntk_matches_ntk_at_its_length():
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(encoding="rope", **SMALL)).eval()
    with pytest.raises(ValueError, match="unknown rope scaling"):
        model.set_extension("nonsense", 2.0)
    with pytest.raises(ValueError, match="takes no extension"):
        TinyDecoder(ModelConfig(encoding="t5", **SMALL)).set_extension("ntk", 2.0)
    idx = torch.randint(0, 256, (1, 64))
    model.set_extension("ntk", 4.0)
    ntk = model(idx)
    model.set_extension("dynamic", 1.0, length_rule="paper")
    torch.testing.assert_close(model(idx), ntk)  # 64 = 4 x 16: Dynamic NTK picks s = 4
    plain_short = model(idx[:, :16])
    model.set_extension()
    torch.testing.assert_close(model(idx[:, :16]), plain_short)  # within L, Dynamic NTK is plain RoPE
    model.set_extension("yarn", 4.0)
    assert not torch.allclose(model(idx), ntk)


def test_ntk_alibi_only_changes_the_alibi_model_beyond_the_first_head():
    model = TinyDecoder(ModelConfig(encoding="alibi", **SMALL))
    plain = model.attention_bias(8)
    model.set_extension("ntk_alibi", 4.0)
    scaled = model.attention_bias(8)
    torch.testing.assert_close(scaled[:, 0], plain[:, 0])
    assert not torch.allclose(scaled[:, 1], plain[:, 1])


def test_every_method_of_the_plan_configures_its_model():
    config = quick_config()
    for name, method in methods(config).items():
        assert method.model in ENCODINGS or method.model.endswith("_ft"), name
    assert {"rope", "rope_pi", "rope_ntk", "rope_ntk_by_parts", "rope_dynamic_ntk", "rope_yarn", "rope_pi_ft",
            "rope_yarn_ft", "alibi_ntk", "learned", "sinusoidal", "t5", "nope", "alibi", "rope_dynamic_pi",
            "rope_dynamic_yarn"} == set(methods(config))


# -- the quick run, end to end ----------------------------------------------------------------------------
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "quick.json"
    completed = subprocess.run(
        [sys.executable, "-m", "solutions.lab", "run", "--out", str(out), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "[" in completed.stderr and "evaluated rope_yarn_ft" in completed.stderr, "a progress bar"
    results = json.loads(out.read_text())
    config = quick_config()
    lengths = [str(length) for length in config.lengths]
    assert results["quick"] is True and results["train_length"] == config.train_length
    assert results["lengths"] == config.lengths
    names = set(methods(config))
    for key in ("ppl", "passkey", "passkey_by_depth", "passkey_digit_accuracy", "errors"):
        assert set(results[key]) == names, key
    for name in names:
        assert list(results["ppl"][name]) == lengths and list(results["passkey"][name]) == lengths
        assert list(results["passkey_by_depth"][name][lengths[0]]) == results["passkey_depths"]
    for name in names - {"learned"}:
        assert results["errors"][name] is None
        assert all(v > 1 and math.isfinite(v) for v in results["ppl"][name].values()), name
        assert all(0 <= v <= 1 for v in results["passkey"][name].values()), name
    assert results["ppl"]["learned"][lengths[0]] > 1
    assert all(results["ppl"]["learned"][length] is None for length in lengths[1:])
    assert all(results["passkey"]["learned"][length] is None for length in lengths[1:])
    assert "cannot extrapolate" in results["errors"]["learned"]
    # All methods of one model agree at 1x, where no extension changes anything but YaRN's temperature and
    # the static interpolations.
    assert results["ppl"]["rope_dynamic_ntk"][lengths[0]] == results["ppl"]["rope"][lengths[0]]
    assert results["ppl"]["rope_dynamic_ntk"][lengths[-1]] == results["ppl"]["rope_ntk"][lengths[-1]]
    for static in ("pi", "yarn"):  # a per-length factor equals the static one at the longest length
        assert results["ppl"][f"rope_dynamic_{static}"][lengths[-1]] == results["ppl"][f"rope_{static}"][lengths[-1]]
        assert results["ppl"][f"rope_dynamic_{static}"][lengths[0]] == results["ppl"]["rope"][lengths[0]]
    assert results["steps"] == {"train": config.train.steps, "fine_tune": config.fine_tune.steps}
    assert set(results["seeds"]) >= {"model_init", "train_data", "evaluation"}
    assert results["wall_time_s"] > 0 and results["torch_version"] == torch.__version__
    assert results["threads_per_worker"] == 1 and results["workers"] == 2
    assert set(results["training"]) == set(ENCODINGS) | {"rope_pi_ft", "rope_yarn_ft"}
