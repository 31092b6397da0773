"""The checking library's behaviour beyond its mistake catalogues, proved with student-style functions.

Every mistake of every catalogue is proved by ``tests/test_grader_mistakes.py`` (each `Mistake` carries its
example wrong function). This file proves the rest: the references pass visible and hidden cases; a mistake
written another way than its example (a layout asked the other way, a factor on the logits, a real Triton
kernel) is still named; an assignment's own test cells name a mistake (`grade_in_process`); and the engine's
generic messages (time limits, shapes, dtypes, NaN, in-place changes, unimplemented stubs, exceptions, hidden
cases, stderr) and `grader.checks.digest_paths`. Every wrong function is written the way a student would get
it wrong (not by transforming the reference), and each test asserts that the check fails *and* that its
message names the mistake.
"""

import contextlib
import io
import textwrap
import threading
from pathlib import Path

import nbformat
import pytest
import torch

import solutions
from grader import checks, references
from grader.checks import CheckFailed
from grader.course_checks import comparing as course_comparing


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ RoPE


def rope_rotate(x, cos, sin, pairing):
    """A student-style RoPE that always uses one layout: ``pairing`` is 'half' or 'even-odd'."""
    if pairing == "half":
        a, b = x.chunk(2, dim=-1)
    else:
        a, b = x[..., 0::2], x[..., 1::2]
    new_a = a * cos - b * sin
    new_b = b * cos + a * sin
    if pairing == "half":
        return torch.cat((new_a, new_b), dim=-1)
    return torch.stack((new_a, new_b), dim=-1).flatten(-2)


def test_correct_apply_rope_passes_both_layouts(capsys):
    checks.check_apply_rope(solutions.apply_rope, interleaved=False)
    checks.check_apply_rope(solutions.apply_rope, interleaved=True, hidden=True, seed=3, shapes=[(1, 2, 7, 16)])
    assert "match the reference" in capsys.readouterr().out


def test_wrong_layout_is_named_for_each_layout():
    def always_interleaved(x, cos, sin, interleaved=False):
        return rope_rotate(x, cos, sin, "even-odd")

    def always_half_split(x, cos, sin, interleaved=False):
        return rope_rotate(x, cos, sin, "half")

    message = failure(checks.check_apply_rope, always_interleaved, interleaved=False)
    assert "Wrong RoPE layout" in message and "interleaved layout" in message and "half-split" in message
    message = failure(checks.check_apply_rope, always_half_split, interleaved=True)
    assert "Wrong RoPE layout" in message and "half-split layout" in message


def test_the_sinusoidal_references_pass_hidden_cases():
    checks.check_shift_matrix(solutions.sinusoidal_shift_matrix, hidden=True, cases=[(7, 16), (0, 2)])
    checks.check_sinusoidal_encoding(solutions.sinusoidal_encoding, hidden=True, cases=[(512, 64), (1, 128)])


# ------------------------------------------------------------------------------------------------ ALiBi / T5


def student_alibi(slopes, query_length, key_length=None):
    key_length = query_length if key_length is None else key_length
    i = torch.arange(key_length - query_length, key_length)[:, None]
    j = torch.arange(key_length)[None, :]
    return (-slopes[:, None, None] * (i - j).float()).masked_fill(j > i, float("-inf"))


def test_a_student_style_alibi_bias_passes_hidden_cases():
    checks.check_alibi_bias(lambda s, q, k=None: student_alibi(s, q, k), hidden=True, cases=[(12, 3, 9)])


def test_alibi_slopes_for_any_head_count_pass_hidden_cases():
    checks.check_alibi_slopes(solutions.alibi_slopes, head_counts=(12, 5, 3), hidden=True)


def test_t5_sign_in_the_causal_direction():
    def query_minus_key(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
        return solutions.t5_relative_position_bucket(-relative_position, bidirectional, num_buckets, max_distance)

    # The catalogue's example proves the sign bidirectionally; causally, future offsets land in bucket 0.
    assert "wrong sign" in failure(checks.check_t5_bucket, query_minus_key, bidirectional=False)
    checks.check_t5_bucket(solutions.t5_relative_position_bucket, bidirectional=False, hidden=True, seed=5)


# ------------------------------------------------------------------------------------------------ scaling


def test_the_scaling_references_pass():
    checks.check_rope_scaling(solutions.rope_scaling, "linear")
    checks.check_rope_scaling(solutions.rope_scaling, "yarn")
    checks.check_yarn_cos_sin(references.yarn_cos_sin)


def test_yarn_factor_on_the_logits_instead_of_cos_and_sin_is_applied_once():
    def logits_factor_once(q, k, q_positions, k_positions, base, factor, original):
        inv_freq, attention_factor = solutions.rope_scaling("yarn", q.shape[-1], base, factor, original)
        cq, sq = solutions.rope_cos_sin(inv_freq, q_positions)
        ck, sk = solutions.rope_cos_sin(inv_freq, k_positions)
        return attention_factor * solutions.apply_rope(q, cq, sq) @ solutions.apply_rope(k, ck, sk).T

    assert "applied only once" in failure(checks.check_yarn_logits, logits_factor_once)
    checks.check_yarn_logits(references.yarn_logits)


# ------------------------------------------------------------------------------------------------ Part 5 assignment

PART5 = Path(__file__).resolve().parents[1] / "grader" / "source" / "part5_extrapolation" / "part5_extrapolation.ipynb"


def grade_in_process(notebook, replaced=None):
    """Run an assignment's source notebook as a submission, in this process: the setup and solution cells (those
    named in ``replaced`` swapped for a student's version), then every test cell, visible and hidden. Returns
    ``{test cell: None if it passed, else the check's message}``. Demo cells are skipped."""
    replaced = {name: textwrap.dedent(code) for name, code in (replaced or {}).items()}
    namespace, results = {}, {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta:
            continue
        source = replaced.get(meta["grade_id"], cell.source)
        with contextlib.redirect_stdout(io.StringIO()):
            if not meta.get("grade"):
                exec(source, namespace)
                continue
            try:
                exec(source, namespace)
                results[meta["grade_id"]] = None
            except CheckFailed as failed:
                results[meta["grade_id"]] = str(failed)
    return results


def lost_tests(results):
    return {name for name, message in results.items() if message is not None}


def test_part5_source_solutions_pass_every_test_cell():
    results = grade_in_process(PART5)
    assert len(results) == 16 and not lost_tests(results), results


def test_part5_pi_as_a_base_change_is_named_and_costs_only_pi():
    results = grade_in_process(PART5, {"linear_scaling": """
        def linear_scaling(dim, base, factor, original_max_position_embeddings, seq_len=None):
            return rope_inv_freq(dim, base * factor), 1.0
        """})
    assert lost_tests(results) == {"test_linear_scaling_visible", "test_linear_scaling_hidden"}
    for name in ("test_linear_scaling_visible", "test_linear_scaling_hidden"):
        assert "Position Interpolation applied as a base change" in results[name]
    hidden = results["test_linear_scaling_hidden"]
    assert "hidden case" in hidden and "expected" not in hidden and "yours is" not in hidden


YARN_LOGITS_BY_HAND = """
    def yarn_logits(q, k, q_positions, k_positions, base, factor, original_max_position_embeddings):
        inv_freq, attention_factor = yarn_scaling(q.shape[-1], base, factor, original_max_position_embeddings)

        def rotate(x, positions, scale):
            angles = positions.float()[:, None] * inv_freq
            cos, sin = scale * torch.cos(angles), scale * torch.sin(angles)
            a, b = x.chunk(2, dim=-1)
            return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

        return {logits}
    """


@pytest.mark.parametrize("logits, words", [
    ("rotate(q, q_positions, 1.0) @ rotate(k, k_positions, 1.0).T", "attention factor is missing"),
    ("rotate(q, q_positions, attention_factor) @ rotate(k, k_positions, 1.0).T", "applied only once"),
    ("attention_factor * rotate(q, q_positions, 1.0) @ rotate(k, k_positions, 1.0).T", "applied only once"),
    ("attention_factor ** 2 * rotate(q, q_positions, attention_factor) @ rotate(k, k_positions, attention_factor).T",
     "applied twice"),
])
def test_part5_yarn_logits_with_the_factor_missing_once_or_twice_are_named(logits, words):
    results = grade_in_process(PART5, {"yarn_logits": YARN_LOGITS_BY_HAND.format(logits=logits)})
    assert lost_tests(results) == {"test_yarn_logits_visible", "test_yarn_logits_hidden"}
    assert words in results["test_yarn_logits_visible"] and words in results["test_yarn_logits_hidden"]


def test_part5_yarn_scaling_without_its_factor_is_named():
    results = grade_in_process(PART5, {"yarn_scaling": """
        def yarn_scaling(dim, base, factor, original_max_position_embeddings, seq_len=None, beta_fast=32.0,
                         beta_slow=1.0):
            return ntk_by_parts_scaling(dim, base, factor, original_max_position_embeddings, beta_fast=beta_fast,
                                        beta_slow=beta_slow)
        """})
    # The logits, built on yarn_scaling, lose the factor too, and say so.
    assert lost_tests(results) == {"test_yarn_scaling_visible", "test_yarn_scaling_hidden", "test_yarn_logits_visible",
                                   "test_yarn_logits_hidden"}
    assert all("attention factor is missing" in message for message in results.values() if message)


PART5_MISTAKES = [
    ("ntk_aware_scaling", """
        def ntk_aware_scaling(dim, base, factor, original_max_position_embeddings, seq_len=None):
            return rope_inv_freq(dim, base * factor), 1.0
        """, "test_ntk_aware_scaling_visible", "You multiplied the base by s"),
    ("ntk_by_parts_ramp", """
        def ntk_by_parts_ramp(dim, base, original_max_position_embeddings, beta_fast=32.0, beta_slow=1.0):
            turns = original_max_position_embeddings * rope_inv_freq(dim, base).double() / (2 * math.pi)
            return ((turns - beta_slow) / (beta_fast - beta_slow)).clamp(0, 1).float()
        """, "test_ntk_by_parts_scaling_visible", "the YaRN paper's"),
    ("ntk_by_parts_ramp", """
        def ntk_by_parts_ramp(dim, base, original_max_position_embeddings, beta_fast=32.0, beta_slow=1.0):
            def index(turns):
                return dim * math.log(original_max_position_embeddings / (2 * math.pi * turns)) / (2 * math.log(base))
            low, high = max(index(beta_fast), 0), min(index(beta_slow), dim - 1)
            return 1 - ((torch.arange(dim // 2) - low) / (high - low)).clamp(0, 1).float()
        """, "test_ntk_by_parts_scaling_visible", "first rounds them outwards"),
    ("ntk_by_parts_scaling", """
        def ntk_by_parts_scaling(dim, base, factor, original_max_position_embeddings, seq_len=None, beta_fast=32.0,
                                 beta_slow=1.0):
            plain = rope_inv_freq(dim, base)
            gamma = ntk_by_parts_ramp(dim, base, original_max_position_embeddings, beta_fast, beta_slow)
            return gamma * plain / factor + (1 - gamma) * plain, 1.0
        """, "test_ntk_by_parts_scaling_visible", "wrong way round"),
    ("dynamic_ntk_scaling", """
        def dynamic_ntk_scaling(dim, base, factor, original_max_position_embeddings, seq_len):
            return ntk_aware_scaling(dim, base, max(1.0, seq_len / original_max_position_embeddings), 0)
        """, "test_dynamic_ntk_scaling_visible", "the YaRN paper's length rule"),
    ("dynamic_ntk_scaling", """
        def dynamic_ntk_scaling(dim, base, factor, original_max_position_embeddings, seq_len):
            scale = factor * seq_len / original_max_position_embeddings - (factor - 1)
            return ntk_aware_scaling(dim, base, scale, original_max_position_embeddings)
        """, "test_dynamic_ntk_scaling_visible", "Up to the training length"),
    ("dynamic_ntk_scaling", """
        def dynamic_ntk_scaling(dim, base, factor, original_max_position_embeddings, seq_len):
            return ntk_aware_scaling(dim, base, factor, original_max_position_embeddings)
        """, "test_dynamic_ntk_scaling_visible", "ignore the current length"),
    ("yarn_attention_factor", """
        def yarn_attention_factor(factor, mscale=1.0):
            return 0.1 * mscale * math.log10(factor) + 1.0 if factor > 1 else 1.0
        """, "test_yarn_attention_factor_visible", "natural logarithm"),
    ("yarn_attention_factor", """
        def yarn_attention_factor(factor, mscale=1.0):
            return (0.1 * mscale * math.log(factor) + 1.0) ** 2 if factor > 1 else 1.0
        """, "test_yarn_attention_factor_visible", "the factor of the logits"),
    ("yarn_attention_factor", """
        def yarn_attention_factor(factor, mscale=1.0):
            return 0.1 * mscale * math.log(factor) + 1.0
        """, "test_yarn_attention_factor_hidden", "For s <= 1"),
    ("yarn_attention_factor", """
        def yarn_attention_factor(factor, mscale=1.0):
            return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        """, "test_yarn_attention_factor_hidden", "mscale is ignored"),
    ("ntk_alibi_slopes", """
        def ntk_alibi_slopes(num_heads, factor):
            return alibi_slopes(num_heads) / factor
        """, "test_ntk_alibi_slopes_visible", "position interpolation for ALiBi"),
    ("ntk_alibi_slopes", """
        def ntk_alibi_slopes(num_heads, factor):
            h = torch.arange(num_heads, 0, -1) - 1
            return alibi_slopes(num_heads) / factor ** (h / max(num_heads - 1, 1))
        """, "test_ntk_alibi_slopes_visible", "wrong way"),
    ("ntk_alibi_slopes", """
        def ntk_alibi_slopes(num_heads, factor):
            slopes = alibi_slopes(num_heads)
            rank = torch.empty(num_heads)
            rank[slopes.argsort(descending=True)] = torch.arange(num_heads, dtype=torch.float32)
            return slopes / factor ** (rank / max(num_heads - 1, 1))
        """, "test_ntk_alibi_slopes_hidden", "order of the slopes"),
]


@pytest.mark.parametrize("cell, code, test_cell, words", PART5_MISTAKES,
                         ids=[f"{cell}-{words[:24]}" for cell, _, _, words in PART5_MISTAKES])
def test_part5_each_mistake_is_named_by_the_assignments_own_tests(cell, code, test_cell, words):
    results = grade_in_process(PART5, {cell: code})
    assert results[test_cell] is not None and words in results[test_cell], results[test_cell]


# ------------------------------------------------------------------------------------------------ Part 7 assignment

PART7 = Path(__file__).resolve().parents[1] / "grader" / "source" / "part7_multimodal" / "part7_multimodal.ipynb"
PART7_TABLES = {f"test_mrope_cos_sin_{layout}_{part}" for layout in ("chunked", "interleaved")
                for part in ("visible", "hidden")}


def both(name):
    return {f"test_{name}_visible", f"test_{name}_hidden"}


def test_part7_source_solutions_pass_every_test_cell():
    results = grade_in_process(PART7)
    assert len(results) == 10 and not lost_tests(results), results


ROPE2D_BY_HAND = """
    def rope2d_cos_sin(dim, height, width, base=100.0):
        freqs = rope_inv_freq(dim // 2, base)
        rows = torch.arange(height).repeat_interleave(width)
        cols = torch.arange(width).repeat(height)
        angles = {angles}
        return torch.cos(angles), torch.sin(angles)
    """

PAIR_AXES_BY_HAND = """
    def mrope_pair_axes(num_pairs, mrope_section, interleaved=False):
        s_t, s_h, s_w = mrope_section
        if interleaved:
            {interleaved}
        return {chunked}
    """
INTERLEAVED_RIGHT = """axes = torch.zeros(num_pairs, dtype=torch.int64)
            axes[1:3 * s_h:3] = 1
            axes[2:3 * s_w:3] = 2
            return axes"""

POSITION_IDS_BY_HAND = """
    def mrope_position_ids(token_types, image_grid_thw=None, video_grid_thw=None, spatial_merge_size=2):
        batch, seq = token_types.shape
        image_grids = [] if image_grid_thw is None else image_grid_thw.tolist()
        video_grids = [] if video_grid_thw is None else video_grid_thw.tolist()
        position_ids = torch.zeros(3, batch, seq, dtype=torch.long)
        deltas = torch.zeros(batch, dtype=torch.long)
        for b in range(batch):
            s, i = 0, 0
            while i < seq:
                if token_types[b, i] == 0:
                    position_ids[:, b, i] = s
                    s, i = s + 1, i + 1
                    continue
                t, h, w = image_grids.pop(0) if token_types[b, i] == 1 else video_grids.pop(0)
                gh, gw = {grid}
                n = {count}
                for k in range(n):
                    position_ids[0, b, i + k] = s + k // (gh * gw)
                    position_ids[1, b, i + k] = s + k // gw % gh
                    position_ids[2, b, i + k] = s + k % gw
                s, i = {advance}, i + n
            deltas[b] = {delta}
        return position_ids, deltas
    """
RIGHT_IDS = dict(grid="h // spatial_merge_size, w // spatial_merge_size", count="t * gh * gw",
                 advance="s + max(t, gh, gw)", delta="position_ids[:, b].max() + 1 - seq")

PART7_MISTAKES = [
    ("rope2d_cos_sin", ROPE2D_BY_HAND.format(angles="torch.cat((rows[:, None] * freqs, cols[:, None] * freqs), -1)"),
     both("rope2d_cos_sin"), "turn with the row and the next dim/4 with the column"),
    ("rope2d_cos_sin", ROPE2D_BY_HAND.format(
        angles="torch.stack((cols[:, None] * freqs, rows[:, None] * freqs), -1).flatten(1)"),
     both("rope2d_cos_sin"), "alternate between the column and the row"),
    ("rope2d_cos_sin", ROPE2D_BY_HAND.format(angles="torch.cat((cols[:, None] * freqs, rows[:, None] * freqs), -1)")
     .replace("rope_inv_freq(dim // 2, base)", "rope_inv_freq(dim, base)[: dim // 4]"),
     both("rope2d_cos_sin"), "those of a 1-D head of size dim"),
    # A wrong pair-axis vector costs the tables built on it too, with the same words.
    ("mrope_pair_axes", PAIR_AXES_BY_HAND.format(interleaved=INTERLEAVED_RIGHT,
                                                 chunked="torch.tensor([1] * s_h + [0] * s_t + [2] * s_w)"),
     both("mrope_pair_axes") | both("mrope_cos_sin_chunked"), "Your chunks come in the order h, t, w"),
    ("mrope_pair_axes", PAIR_AXES_BY_HAND.format(interleaved="return torch.arange(num_pairs) % 3",
                                                 chunked="torch.tensor([0] * s_t + [1] * s_h + [2] * s_w)"),
     both("mrope_pair_axes") | both("mrope_cos_sin_interleaved"), "runs to the last pair"),
    ("mrope_pair_axes", PAIR_AXES_BY_HAND.format(interleaved=INTERLEAVED_RIGHT.replace("[1:3", "[0:3").replace(
        "[2:3", "[1:3"), chunked="torch.tensor([0] * s_t + [1] * s_h + [2] * s_w)"),
     both("mrope_pair_axes") | both("mrope_cos_sin_interleaved"), "off by one axis"),
    ("mrope_pair_axes", PAIR_AXES_BY_HAND.format(interleaved="return torch.tensor([0] * s_t + [1] * s_h + [2] * s_w)",
                                                 chunked="torch.tensor([0] * s_t + [1] * s_h + [2] * s_w)"),
     both("mrope_pair_axes") | both("mrope_cos_sin_interleaved"), "interleaved=True asks for Qwen3-VL's"),
    ("mrope_cos_sin", """
        def mrope_cos_sin(inv_freq, position_ids, mrope_section, interleaved=False):
            axes = mrope_pair_axes(len(inv_freq), mrope_section, interleaved)
            angles = position_ids[axes].movedim(0, -1).float() * inv_freq
            emb = torch.cat((angles, angles), dim=-1)
            return emb.cos(), emb.sin()
        """, PART7_TABLES, "Your cos/sin have dim columns"),
    ("mrope_cos_sin", """
        def mrope_cos_sin(inv_freq, position_ids, mrope_section, interleaved=False):
            angles = position_ids[0].float()[..., None] * inv_freq
            return torch.cos(angles), torch.sin(angles)
        """, PART7_TABLES, "turns with the temporal id"),
    # The merge forgotten in the layout (rows of w patches) and the step after the block, not in the token count.
    ("mrope_position_ids", POSITION_IDS_BY_HAND.format(**{
        **RIGHT_IDS, "grid": "h, w", "count": "t * (h // spatial_merge_size) * (w // spatial_merge_size)",
        "advance": "s + max(t, h, w)"}),
     both("mrope_position_ids"), "laid out on the grid in patches, before the merge"),
    ("mrope_position_ids", POSITION_IDS_BY_HAND.format(**{**RIGHT_IDS, "advance": "s + 1"}),
     both("mrope_position_ids"), "continues at the block's first id + 1"),
    ("mrope_position_ids", POSITION_IDS_BY_HAND.format(**{**RIGHT_IDS, "advance": "s + n"}),
     both("mrope_position_ids"), "as if every token had a position of its own"),
    ("mrope_position_ids", POSITION_IDS_BY_HAND.format(**{**RIGHT_IDS, "delta": "position_ids[:, b].max() - seq"}),
     both("mrope_position_ids"), "Your deltas are one too small"),
    ("mrope_position_ids", POSITION_IDS_BY_HAND.format(**{**RIGHT_IDS, "delta": "seq - position_ids[:, b].max() - 1"}),
     both("mrope_position_ids"), "Your deltas have the wrong sign"),
]


@pytest.mark.parametrize("cell, code, lost, words", PART7_MISTAKES,
                         ids=[f"{cell}-{words[:24]}" for cell, _, _, words in PART7_MISTAKES])
def test_part7_each_mistake_is_named_by_the_assignments_own_tests(cell, code, lost, words):
    results = grade_in_process(PART7, {cell: code})
    assert lost_tests(results) == lost, results
    for name in lost:
        assert words in results[name], (name, results[name])
        if name.endswith("_hidden"):  # the hidden cases' values stay hidden (shapes may show)
            assert "hidden case" in results[name] and "yours is" not in results[name], results[name]


def test_part7_the_reference_position_ids_agree_with_the_walk_the_mistakes_change():
    """The mistakes of `check_mrope_position_ids` change one rule of a walk over the blocks; unchanged, that walk
    is the reference on every case of the notebook (visible and hidden), so a mistake's output differs from the
    reference only by its own rule."""
    from grader.checks import part7_multimodal as part7

    hidden = [line for line in nbformat.read(PART7, as_version=4).cells
              if "check_mrope_position_ids(mrope_position_ids, cases=" in line.source]
    assert len(hidden) == 1
    cases = eval(hidden[0].source.split("cases=", 1)[1].rsplit(", hidden=True", 1)[0])  # noqa: S307 (the course's cell)
    for rows, merge in list(part7.POSITION_IDS_CASES) + cases:
        case = part7._prompt_case(rows, merge, hidden=False)
        ids, deltas = part7._walked_ids(case)
        expected_ids, expected_deltas = solutions.mrope_position_ids(*case.args, **case.kwargs)
        assert torch.equal(ids, expected_ids) and torch.equal(deltas, expected_deltas), case.label


# ------------------------------------------------------------------------------------------------ MLA, Part 1


def test_mla_absorbed_path_and_equality():
    def unscaled(q_nope, q_rope, latent, k_rope, w_uk, scale):
        return q_nope @ w_uk @ latent.T + q_rope @ k_rope.T

    assert "not multiplied by `scale`" in failure(checks.check_absorbed_latent_scores, unscaled)
    checks.check_absorbed_equals_naive(references.naive_latent_scores, references.absorbed_latent_scores)
    message = failure(checks.check_absorbed_equals_naive, references.naive_latent_scores, unscaled)
    assert "disagree" in message
    checks.check_kv_cache_elements(solutions.kv_cache_elements_per_token)


def test_the_decoupled_reference_passes():
    checks.check_decoupled_rope_scores(references.decoupled_rope_scores)


def test_permutation_detector_and_student_test_grading():
    def correct(f, x, perm):
        return bool(torch.allclose(f(x[perm]), f(x)[perm], atol=1e-5))

    def invariance(f, x, perm):
        return bool(torch.allclose(f(x[perm]), f(x), atol=1e-5))

    checks.check_permutation_detector(correct)
    checks.check_permutation_detector(correct, identity=True, hidden=True, seed=4)
    assert "permute the rows of the output" in failure(checks.check_permutation_detector, invariance)

    def good_test(rotate):
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
        for m, n in [(0, 3), (2, 7), (5, 1)]:
            for t in (1, 10, 50):
                assert torch.allclose(rotate(q, m) @ rotate(k, n), rotate(q, m + t) @ rotate(k, n + t), atol=1e-8)

    def weak_test(rotate):
        q = torch.ones(4, dtype=torch.float64)
        assert torch.allclose(rotate(q, 0) @ rotate(q, 0), q @ q)

    checks.check_relative_property_test(good_test)
    checks.check_relative_property_test(good_test, hidden=True)
    assert "does not have the relative property" in failure(checks.check_relative_property_test, weak_test)

    def always_fails(rotate):
        assert False, "no"

    assert "rejected a correct implementation" in failure(checks.check_relative_property_test, always_fails)


# ------------------------------------------------------------------------------------------------ generic behaviour


def test_an_infinite_loop_fails_with_a_time_limit_message(monkeypatch):
    monkeypatch.setattr(course_comparing, "DEFAULT_TIME_LIMIT", 0.3)  # read at every call

    def forever(dim, base=10000.0):
        while True:
            try:
                pass
            except BaseException:  # a student swallowing everything still gets stopped
                pass

    message = failure(checks.check_rope_inv_freq, forever)
    assert "did not return within 0.3 s" in message


def test_the_time_limit_also_works_off_the_main_thread():
    outcome = {}

    def run():
        try:
            checks.call_with_time_limit(lambda: __import__("time").sleep(5), seconds=0.2)
        except checks.CallTimeout:
            outcome["timed out"] = True

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(3)
    assert outcome == {"timed out": True}


def test_shape_dtype_nan_in_place_and_unimplemented_messages():
    assert "has shape [4, 8], expected [8, 4]" in failure(
        checks.check_rope_cos_sin, lambda f, p: tuple(t.T for t in solutions.rope_cos_sin(f, p)),
        cases=[(8, (0, 1, 2, 3, 4, 5, 6, 7))])
    assert "dtype torch.float64" in failure(checks.check_rope_inv_freq,
                                            lambda dim, base=10000.0: solutions.rope_inv_freq(dim, base).double())
    assert "contains NaN" in failure(checks.check_rope_inv_freq,
                                     lambda dim, base=10000.0: solutions.rope_inv_freq(dim, base) * float("nan"))

    def in_place(x, cos, sin, interleaved=False):
        out = solutions.apply_rope(x, cos, sin, interleaved)
        x.zero_()
        return out

    assert "in place" in failure(checks.check_apply_rope, in_place, interleaved=False)

    def stub(*args, **kwargs):
        raise NotImplementedError()

    assert "not implemented yet" in failure(checks.check_rope_inv_freq, stub)

    def crashes(dim, base=10000.0):
        return torch.arange(dim) @ torch.ones(3)

    message = failure(checks.check_rope_inv_freq, crashes)
    assert "raised RuntimeError" in message and "line" in message and "torch.arange(dim) @ torch.ones(3)" in message


def test_hidden_failures_show_no_expected_values():
    def off(dim, base=10000.0):
        return solutions.rope_inv_freq(dim, base) * 1.001

    visible = failure(checks.check_rope_inv_freq, off)
    hidden = failure(checks.check_rope_inv_freq, off, hidden=True, cases=[(32, 123.0)])
    assert "expected" in visible and "yours is" in visible
    assert "hidden case 1 of 1" in hidden and "largest absolute error" in hidden
    assert "yours is" not in hidden and "expected" not in hidden
    reference_values = [f"{v:.6g}" for v in solutions.rope_inv_freq(32, 123.0).tolist()[1:]]
    assert not any(value in hidden for value in reference_values)


def test_stderr_and_warnings_of_the_student_do_not_leak_to_stderr(capfd):
    import sys
    import warnings

    def noisy(dim, base=10000.0):
        print("debug", file=sys.stderr)
        warnings.warn("a warning")
        return solutions.rope_inv_freq(dim, base)

    checks.check_rope_inv_freq(noisy)
    captured = capfd.readouterr()
    assert captured.err == "" and "debug" in captured.out


def test_a_triton_kernel_is_checked_through_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when @triton.jit decorates: the kernels below are interpreted
    import triton
    import triton.language as tl

    @triton.jit
    def good(X, OUT, INV_FREQ, stride_row, position_offset, HALF: tl.constexpr):
        row = tl.program_id(0)
        i = tl.arange(0, HALF)
        angle = (row + position_offset).to(tl.float32) * tl.load(INV_FREQ + i)
        cos, sin = tl.cos(angle), tl.sin(angle)
        x1, x2 = tl.load(X + row * stride_row + i), tl.load(X + row * stride_row + HALF + i)
        tl.store(OUT + row * stride_row + i, x1 * cos - x2 * sin)
        tl.store(OUT + row * stride_row + HALF + i, x2 * cos + x1 * sin)

    @triton.jit
    def even_odd(X, OUT, INV_FREQ, stride_row, position_offset, HALF: tl.constexpr):
        row = tl.program_id(0)
        i = tl.arange(0, HALF)
        angle = (row + position_offset).to(tl.float32) * tl.load(INV_FREQ + i)
        cos, sin = tl.cos(angle), tl.sin(angle)
        x1, x2 = tl.load(X + row * stride_row + 2 * i), tl.load(X + row * stride_row + 2 * i + 1)
        tl.store(OUT + row * stride_row + 2 * i, x1 * cos - x2 * sin)
        tl.store(OUT + row * stride_row + 2 * i + 1, x2 * cos + x1 * sin)

    @triton.jit
    def no_offset(X, OUT, INV_FREQ, stride_row, position_offset, HALF: tl.constexpr):
        row = tl.program_id(0)
        i = tl.arange(0, HALF)
        angle = row.to(tl.float32) * tl.load(INV_FREQ + i)
        cos, sin = tl.cos(angle), tl.sin(angle)
        x1, x2 = tl.load(X + row * stride_row + i), tl.load(X + row * stride_row + HALF + i)
        tl.store(OUT + row * stride_row + i, x1 * cos - x2 * sin)
        tl.store(OUT + row * stride_row + HALF + i, x2 * cos + x1 * sin)

    @triton.jit
    def stub(X, OUT, INV_FREQ, stride_row, position_offset, HALF: tl.constexpr):
        raise NotImplementedError()

    def launcher(kernel):
        def run(x, inv_freq, position_offset=0):
            out = torch.empty_like(x)
            kernel[(x.shape[0],)](x, out, inv_freq, x.stride(0), position_offset, HALF=x.shape[1] // 2)
            return out
        return run

    checks.check_rope_kernel(launcher(good))
    assert "Wrong RoPE layout" in failure(checks.check_rope_kernel, launcher(even_odd))
    assert "position offset is ignored" in failure(checks.check_rope_kernel, launcher(no_offset))
    assert "not implemented yet" in failure(checks.check_rope_kernel, launcher(stub))


# ------------------------------------------------------------------------------------------------ the harness's needs


class HarnessError(Exception):
    """What the grading harness raises here when the student's function, run in another process, raised."""

    def __init__(self, message, student_location):
        super().__init__(message)
        self.student_location = student_location


def test_a_proxys_exception_names_the_line_the_harness_reports():
    where = " (line 3 of your code: `x1, x2 = x.chunk(2)`)"

    def proxy(x, cos, sin, interleaved=False):
        raise HarnessError("not enough values to unpack", where)

    message = failure(checks.check_apply_rope, proxy, interleaved=False)
    assert message.endswith(f"raised HarnessError: not enough values to unpack on case 1 (x [5, 8], positions 0..4, "
                            f"interleaved=False){where}.")
    not_a_string = HarnessError("boom", None)
    assert checks.engine._student_location(not_a_string) == ""  # no traceback either: nothing to show


@pytest.mark.parametrize("check, options", [
    (checks.check_apply_rope, dict(interleaved=False)),
    (checks.check_perplexity_by_length, {}),
    (checks.check_permutation_detector, {}),
    (lambda fn, **options: checks.check_absorbed_equals_naive(references.naive_latent_scores, fn, **options), {}),
    (lambda fn, **options: checks.check_absorbed_equals_naive(fn, references.absorbed_latent_scores, **options), {}),
])
def test_a_hidden_case_never_shows_the_text_of_the_students_exception(check, options):
    def leaks(*args, **kwargs):  # reads a hidden input back through its exception
        secret = next(a for a in args if isinstance(a, torch.Tensor))
        text = "SECRET " + str(secret.flatten()[:3].tolist())
        raise ValueError(text)

    visible = failure(check, leaks, **options)
    hidden = failure(check, leaks, hidden=True, **options)
    assert "raised ValueError: SECRET" in visible
    assert "raised ValueError on hidden case 1 of" in hidden and "SECRET" not in hidden
    assert "of your code: `raise ValueError(text)`)." in hidden  # the student's own line stays


def test_a_hidden_run_of_the_students_test_never_shows_its_texts():
    def leaks(rotate):
        text = "SECRET " + str(rotate(torch.ones(4, dtype=torch.float64), 3).tolist())
        raise AssertionError(text)

    def crashes(rotate):
        text = "SECRET " + str(rotate(torch.ones(4, dtype=torch.float64), 3).tolist())
        raise TypeError(text)

    assert "SECRET" in failure(checks.check_relative_property_test, leaks)
    assert "SECRET" in failure(checks.check_relative_property_test, crashes)
    for student_test in (leaks, crashes):
        assert "SECRET" not in failure(checks.check_relative_property_test, student_test, hidden=True)


def test_digest_paths_lists_what_an_assignment_is_graded_with():
    repo = Path(__file__).resolve().parents[1]
    for assignment in checks.ASSIGNMENTS:
        paths = checks.digest_paths(assignment)
        assert paths == sorted(set(paths)) and all(p.is_file() for p in paths)
        assert {repo / "grader" / "checks" / "engine.py", repo / "grader" / "checks" / f"{assignment}.py",
                repo / "grader" / "references.py", repo / "grader" / "course_checks" / "steps.py",
                repo / "grader" / "course_checks" / "comparing.py"} <= set(paths)
        others = set(checks.ASSIGNMENTS) - {assignment}
        assert not {p for p in paths if p.stem in others}, "another assignment's checks"
    part3 = {p.relative_to(repo).as_posix() for p in checks.digest_paths("part3_rope")}
    assert {"solutions/rope.py", "grader/checks/part3_rope.py", "grader/checks/variants.py"} <= part3
    assert "grader/checks/part6_lab.py" not in part3 and not any(p.startswith("solutions/lab/") for p in part3)
    part6 = {p.relative_to(repo).as_posix() for p in checks.digest_paths("part6_lab")}
    assert {"solutions/lab/evaluate.py", "solutions/lab/passkey.py", "solutions/lab/model.py"} <= part6
    part7 = {p.relative_to(repo).as_posix() for p in checks.digest_paths("part7_multimodal")}
    assert {"solutions/mrope.py", "solutions/rope2d.py", "solutions/rope.py"} <= part7
    part1 = {p.relative_to(repo).as_posix() for p in checks.digest_paths("part1_foundations")}
    assert {"solutions/sinusoidal.py", "solutions/attention.py"} <= part1  # position_dot_product: via references
    with pytest.raises(ValueError):
        checks.digest_paths("part9_nothing")
