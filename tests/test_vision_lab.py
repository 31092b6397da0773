"""The vision lab (`solutions.vision_lab`): the task's labels, the models at other grids, the quick run, the committed JSON."""

import json
import math
import pathlib

import pytest
import torch

from solutions import apply_rope, rope2d_cos_sin, rope2d_positions
from solutions.vision_lab import __main__ as cli
from solutions.vision_lab.experiment import (
    METHODS,
    evaluation_images,
    full_config,
    quick_config,
    train,
    TrainConfig,
)
from solutions.vision_lab.model import ENCODINGS, TinyViT, VisionConfig, with_class_token_row
from solutions.vision_lab.task import (
    LABEL_NAMES,
    TaskConfig,
    find_marks,
    make_batch,
    quadrant_label,
    render,
    sample_marks,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "book" / "multimodal" / "vision_results.json"
SMALL = dict(train_grid=6, d_model=16, n_layers=2, n_heads=2, d_ff=32, vocab_size=6)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


# -- the task ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, label", [
    ((3, 3), (1, 1), 0),  # B above and to the left of A
    ((3, 3), (1, 5), 1),  # above, right
    ((3, 3), (6, 0), 2),  # below, left
    ((0, 0), (7, 7), 3),  # below, right
    ((5, 2), (4, 3), 1),  # one row up, one column right
])
def test_quadrant_label_by_hand(a, b, label):
    assert quadrant_label(torch.tensor(a), torch.tensor(b)).item() == label
    assert LABEL_NAMES[label] == ("up" if b[0] < a[0] else "down") + "-" + ("left" if b[1] < a[1] else "right")


def test_a_label_needs_different_rows_and_columns():
    with pytest.raises(ValueError, match="different rows"):
        quadrant_label(torch.tensor([2, 3]), torch.tensor([2, 5]))


def test_a_hand_drawn_image():
    task = TaskConfig(textures=4)
    a, b = torch.tensor([[1, 4]]), torch.tensor([[3, 2]])
    image = render(task, 5, a, b, generator())[0]
    assert image[1, 4] == task.mark_a and image[3, 2] == task.mark_b
    assert (image < task.textures).sum() == 5 * 5 - 2, "every other patch is texture"
    assert quadrant_label(a, b).item() == LABEL_NAMES.index("down-left")


@pytest.mark.parametrize("placement", ["local", "global"])
@pytest.mark.parametrize("grid", [4, 8, 24])
def test_images_hold_one_of_each_mark_and_the_labels_are_their_quadrant(placement, grid):
    task = TaskConfig(placement=placement)
    images, labels = make_batch(task, grid, 500, generator(grid))
    assert images.shape == (500, grid, grid) and labels.shape == (500,)
    assert ((images == task.mark_a).flatten(1).sum(1) == 1).all()
    assert ((images == task.mark_b).flatten(1).sum(1) == 1).all()
    a, b = find_marks(task, images)
    assert torch.equal(labels, quadrant_label(a, b))
    delta = b - a
    assert (delta != 0).all()
    if placement == "local":
        assert delta.abs().max() <= task.max_offset
        # every offset occurs at every grid: the relation is the same at the training grid and beyond
        assert set(delta[:, 0].tolist()) == {-3, -2, -1, 1, 2, 3}
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert (torch.bincount(labels, minlength=4) > 500 / 4 * 0.7).all(), "the four labels are roughly balanced"


def test_translating_both_marks_keeps_the_label():
    task = TaskConfig(placement="global")
    g = generator(1)
    a, b = sample_marks(task, 8, 200, g)
    shift = torch.randint(-20, 21, (200, 1, 2), generator=g).squeeze(1)
    assert torch.equal(quadrant_label(a, b), quadrant_label(a + shift, b + shift))
    # ... and re-rendered on a larger grid at the shifted cells, the images say the same
    images = render(task, 32, a + 12, b + 12, g)
    assert torch.equal(quadrant_label(*find_marks(task, images)), quadrant_label(a, b))


def test_the_local_placement_needs_room_for_its_offsets():
    with pytest.raises(ValueError, match="at least 4"):
        make_batch(TaskConfig(placement="local", max_offset=3), 3, 1, generator())
    with pytest.raises(ValueError, match="placement"):
        TaskConfig(placement="diagonal")


def test_the_same_seed_draws_the_same_images():
    task = TaskConfig()
    first, second = make_batch(task, 8, 50, generator(5)), make_batch(task, 8, 50, generator(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# -- the model --------------------------------------------------------------------------------------------
def tiny(encoding, seed=0):
    return TinyViT(VisionConfig(encoding=encoding, **SMALL), seed=seed).eval()


def scrambled(model, std=0.5):
    """The model with every weight redrawn from N(0, std^2): at its N(0, 0.02) initialisation a tiny ViT's
    output barely depends on its input, which would hide whether positions reach it."""
    g = generator(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("freqs"):
                parameter.copy_(torch.randn(parameter.shape, generator=g) * std)
    return model


def test_nope_cannot_see_the_relation():
    """Permuting the patches leaves NoPE's output unchanged; swapping the two marks does too, but flips the label.

    So for every image there is another with the opposite label (3 - label) on which NoPE answers exactly
    the same: it cannot beat chance.
    """
    task = TaskConfig()
    images, labels = make_batch(task, 6, 16, generator(2))
    model = scrambled(tiny("nope"))
    with torch.no_grad():
        logits = model(images)
        permutation = torch.randperm(36, generator=generator(3))
        permuted = images.flatten(1)[:, permutation].view_as(images)
        assert torch.allclose(model(permuted), logits, atol=1e-5)
        swapped = images.clone()
        swapped[images == task.mark_a], swapped[images == task.mark_b] = task.mark_b, task.mark_a
        assert torch.allclose(model(swapped), logits, atol=1e-5)
    a, b = find_marks(task, swapped)
    assert torch.equal(quadrant_label(a, b), 3 - labels)
    for encoding in ("learned", "axial", "mixed"):  # the encodings do see where the patches are
        model = scrambled(tiny(encoding))
        with torch.no_grad():
            assert not torch.allclose(model(permuted), model(images), atol=1e-3), encoding


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("grid", [6, 9, 12])
def test_every_method_runs_at_a_larger_grid_than_trained(name, grid):
    method = METHODS[name]
    images, _ = make_batch(TaskConfig(), grid, 3, generator())
    with torch.no_grad():
        logits = tiny(method.encoding)(images, interpolate=method.interpolate)
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()


def test_the_learned_table_has_no_vector_for_an_unseen_cell_unless_interpolated():
    images, _ = make_batch(TaskConfig(), 9, 2, generator())
    with pytest.raises(ValueError, match="rows 0 .. 35 only"):
        tiny("learned")(images, interpolate=False)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_interpolation_changes_nothing_at_the_training_grid(encoding):
    images, _ = make_batch(TaskConfig(), 6, 4, generator())
    model = tiny(encoding)
    with torch.no_grad():
        assert torch.equal(model(images, interpolate=True), model(images, interpolate=False))


def test_the_resized_learned_table_keeps_its_corners_and_is_bilinear():
    model = tiny("learned")
    table = model.positions.table.detach().view(6, 6, -1)
    resized = model.learned_table(11, 11).detach().view(11, 11, -1)  # (11 - 1) / (6 - 1) = 2: every other cell is a trained one
    for i in range(6):
        for j in range(6):
            assert torch.allclose(resized[2 * i, 2 * j], table[i, j], atol=1e-6)
    assert torch.allclose(resized[1, 1], table[:2, :2].mean((0, 1)), atol=1e-6), "the middle of four cells"


def test_the_rope_tables_are_the_packages():
    model = tiny("axial")
    head_dim = model.config.head_dim
    for interpolate, train_size in ((False, None), (True, (6, 6))):
        cos, sin = model.axial_cos_sin(9, 9, interpolate)
        expected = with_class_token_row(*rope2d_cos_sin(head_dim, 9, 9, 100.0, train_size=train_size))
        assert torch.equal(cos, expected[0]) and torch.equal(sin, expected[1])
        assert torch.equal(cos[0], torch.ones(head_dim // 2)) and torch.equal(sin[0], torch.zeros(head_dim // 2)), \
            "the class token is not rotated"
        assert torch.equal(model.rope_positions(9, 9, interpolate), rope2d_positions(9, 9, train_size))


def test_mixed_frequencies_are_learned_per_layer_and_head():
    model = tiny("mixed").train()
    freqs = [block.attn.freqs for block in model.blocks]
    assert all(f.shape == (2, 2, 4) for f in freqs)  # [heads, (theta_row, theta_col), head_dim / 2]
    assert not torch.equal(freqs[0], freqs[1]), "every layer draws its own directions"
    images, labels = make_batch(TaskConfig(), 6, 8, generator())
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in freqs)


def test_class_attention_is_the_class_tokens_softmax_row():
    model = tiny("axial")
    images, _ = make_batch(TaskConfig(), 7, 5, generator())
    attention = model.class_attention(images, interpolate=True)
    assert attention.shape == (2, 5, 2, 1 + 49)  # [layers, batch, heads, 1 + patches]
    assert torch.allclose(attention.sum(-1), torch.ones(2, 5, 2))
    # layer 0 by hand: the class token's query (not rotated) against every rotated key
    block = model.blocks[0]
    with torch.no_grad():
        x = torch.cat((model.cls.expand(5, -1, -1), model.embed(images.flatten(1))), dim=1)
        q, k, _ = block.attn.qkv(block.ln1(x)).view(5, 50, 3, 2, 8).permute(2, 0, 3, 1, 4)
        cos, sin = model.axial_cos_sin(7, 7, interpolate=True)
        scores = q[:, :, :1] @ apply_rope(k, cos, sin).transpose(-1, -2) / math.sqrt(8)
    assert torch.allclose(attention[0], scores.softmax(-1).squeeze(-2), atol=1e-6)
    assert not block.attn.record_class_attention and block.attn.class_attention is None, "the record is switched off again"


def test_the_unrotated_class_token_sees_absolute_positions():
    """Moving both marks on a plain background keeps every offset, and a RoPE model's output still changes.

    The patches' scores among themselves depend only on offsets, but the class token is not rotated, so its
    score for a patch at p is <q, R(p) k>: it depends on p itself. NoPE's output does not change.
    """
    task = TaskConfig(textures=1)  # a plain background: translation changes nothing but the marks' cells
    a, b = torch.tensor([[1, 1]]), torch.tensor([[3, 4]])
    images = torch.cat([render(task, 8, a + shift, b + shift, generator()) for shift in (0, 2)])
    for encoding, moves in (("nope", False), ("axial", True), ("mixed", True), ("learned", True)):
        model = scrambled(TinyViT(VisionConfig(encoding=encoding, **{**SMALL, "train_grid": 8, "vocab_size": 3})))
        with torch.no_grad():
            logits = model(images)
        assert torch.allclose(logits[0], logits[1], atol=1e-4) != moves, encoding


def test_initialisation_depends_on_the_seed_alone_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    first, second = tiny("mixed", seed=4), tiny("mixed", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters()))


def test_training_is_deterministic():
    config = TrainConfig(steps=20, batch_size=16, warmup_steps=2)
    models = [TinyViT(VisionConfig(encoding="axial", **SMALL), seed=3) for _ in range(3)]
    records = [train(m, TaskConfig(), config, seed) for m, seed in zip(models, (5, 5, 6))]
    assert records[0]["losses"] == records[1]["losses"] and len(records[0]["losses"]) == 10
    assert all(torch.equal(p, q) for p, q in zip(models[0].parameters(), models[1].parameters()))
    assert records[2]["losses"] != records[0]["losses"], "another seed draws other batches"


def test_evaluation_images_are_shared_by_methods_and_the_probe_keeps_marks_in_the_training_window():
    config = full_config()
    images, labels = evaluation_images(config, "global", 16)
    again, _ = evaluation_images(config, "global", 16)
    assert torch.equal(images, again) and images.shape == (config.eval_samples, 16, 16)
    probe, probe_labels = evaluation_images(config, "global", 16, in_train_window=True)
    a, b = find_marks(config.tasks["global"], probe)
    assert a.max() < config.train_grid and b.max() < config.train_grid
    assert torch.equal(quadrant_label(a, b), probe_labels)


# -- the runs ---------------------------------------------------------------------------------------------
def structure(document):
    """The shape of the results: every key path, with grid and seed keys replaced by placeholders."""
    grids = {str(g) for g in document["grids"]}

    def placeholder(path, key):
        if path[:1] in (("training",), ("evaluation_seconds",)) and len(path) == 3:
            return "<seed>"  # training / evaluation_seconds -> placement -> encoding -> seed
        return "<grid>" if key in grids else key

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, path + (placeholder(path, key),))
        else:
            yield path
    return set(walk(document, ()))


def check_tables(document, config):
    """Every placement, method, grid and seed has its numbers, each in [0, 1]."""
    assert document["grids"] == list(config.grids) and document["train_grid"] == config.train_grid
    assert set(document["methods"]) == set(METHODS)
    assert document["seeds"] == list(config.seeds)
    assert document["seeds_by_method"]["nope"] == list(config.seeds[:1])
    keys = [k + s for k in ("accuracy", "top_prediction_share", "class_attention_on_marks") for s in ("", "_probe")]
    for key in keys:
        assert set(document[key]) == set(config.tasks)
        for placement, table in document[key].items():
            assert set(table) == set(METHODS), (key, placement)
            for name, row in table.items():
                assert set(row) == {str(g) for g in config.grids}, (key, placement, name)
                for per_seed in row.values():
                    assert len(per_seed) == len(document["seeds_by_method"][name]), (key, placement, name)
                    for value in per_seed:
                        values = value if key.startswith("class_attention") else [value]
                        assert all(0.0 <= v <= 1.0 for v in values), (key, placement, name)
                        if key.startswith("class_attention"):
                            assert len(values) == config.model.n_layers


def test_quick_run_writes_a_json_of_the_committed_structure(tmp_path, capsys):
    out = tmp_path / "quick.json"
    assert cli.main(["--quick", "--out", str(out)]) == 0
    quick = json.loads(out.read_text())
    assert quick["quick"] is True
    check_tables(quick, quick_config())
    committed = json.loads(COMMITTED.read_text())
    assert structure(quick) == structure(committed)


def test_a_quick_run_without_out_prints_its_json_and_leaves_the_committed_file_alone(capsys):
    before = COMMITTED.read_bytes()
    assert cli.main(["--quick", "--workers", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["quick"] is True and COMMITTED.read_bytes() == before


def test_the_committed_results_are_a_full_run_of_the_current_code():
    results = json.loads(COMMITTED.read_text())
    config = full_config()
    assert results["quick"] is False
    assert results["model"] == config.model.to_dict()
    assert results["train"] == config.train.to_dict()
    assert results["tasks"] == {p: t.to_dict() for p, t in config.tasks.items()}
    assert results["eval_samples"] == config.eval_samples
    check_tables(results, config)
    for placement in config.tasks:
        nope = [v for per_seed in results["accuracy"][placement]["nope"].values() for v in per_seed]
        # chance is 1/4; 1000 test images put 4 binomial standard errors at about 0.055
        assert all(abs(v - 0.25) < 0.055 for v in nope), nope
        assert set(results["training"][placement]) == set(ENCODINGS)
        for encoding in ENCODINGS:
            assert set(results["training"][placement][encoding]) == {str(s) for s in config.seeds_of(encoding)}
