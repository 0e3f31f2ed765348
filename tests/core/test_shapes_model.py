"""The text-conditioned reference model's data, words and shipped weights (reference_model/shapes.py,
text_network.py): exact labels, the tokenizer's rules, the held-out pairs, the evaluator's accuracy, the file."""

from __future__ import annotations

import pytest
import torch

from reference_model import shapes, weights_path
from reference_model.classifier import load_classifier
from reference_model.network import read_metadata
from reference_model.text_network import TextDenoiser, TextUNetConfig, load_text_model, save_text_model


def test_words_and_tokens():
    assert shapes.words("Red circle, blue square") == ["red", "circle", "and", "blue", "square"]
    assert shapes.words(", red ,, and circle ,") == ["red", "and", "circle"]
    t = shapes.tokenize("red circle, blue square")
    assert t.tolist()[:7] == [shapes.TOKEN_ID[w] for w in
                              (shapes.BOS, "red", "circle", "and", "blue", "square", shapes.EOS)]
    assert t.shape == (shapes.CONTEXT_LENGTH,) and set(t.tolist()[7:]) == {shapes.TOKEN_ID[shapes.PAD]}
    assert shapes.tokenize("").tolist()[:3] == [shapes.TOKEN_ID[shapes.BOS], shapes.TOKEN_ID[shapes.EOS],
                                               shapes.TOKEN_ID[shapes.PAD]]
    with pytest.raises(ValueError, match="unknown word.*'purple'"):
        shapes.tokenize("purple circle")
    with pytest.raises(ValueError, match="at most 10"):
        shapes.tokenize("red circle and blue square and green cross and yellow triangle")
    assert shapes.scene_kinds("red circle and blue and square") == [shapes.kind_index("red circle")]
    assert shapes.named_objects("red circle, blue") == [("red", "circle"), ("blue", None)]
    red = [shapes.kind_index(f"red {s}") for s in shapes.SHAPES]
    circles = [shapes.kind_index(f"{c} circle") for c in shapes.COLOURS]
    assert shapes.matching_kinds("red") == sorted(red)
    assert shapes.matching_kinds("circle") == sorted(circles)
    assert shapes.matching_kinds("red circle") == [shapes.kind_index("red circle")]
    assert shapes.matching_kinds("red, circle") == sorted(set(red) | set(circles))


def test_scenes_have_exact_labels_and_matching_captions():
    sc = shapes.generate_scenes(300, seed=3)
    assert sc.images.shape == (300, 3, 16, 16) and sc.images.min() >= -1 and sc.images.max() <= 1
    counts = sc.present.sum(1)
    assert counts.min() >= 1 and counts.max() <= shapes.MAX_OBJECTS
    assert set(counts.long().tolist()) == {1, 2, 3}
    for i in range(300):
        named = shapes.scene_kinds(sc.captions[i])
        assert sorted(named) == sorted(sc.objects[i]) == torch.nonzero(sc.present[i]).flatten().tolist()
    # deterministic in the seed
    again = shapes.generate_scenes(300, seed=3)
    assert torch.equal(again.images, sc.images) and again.captions == sc.captions


def test_each_kind_is_drawn_in_its_colour():
    """A scene of one object: the most saturated pixels carry that colour's RGB (the label is the picture)."""
    for k, name in enumerate(shapes.KINDS):
        sc = shapes.generate_scenes(4, seed=k, kinds=[[k]] * 4)
        assert sc.present[:, k].all() and sc.present.sum() == 4
        colour = torch.tensor(shapes.COLOUR_RGB[name.split()[0]]) * 2 - 1
        x = sc.images.permute(0, 2, 3, 1).reshape(-1, 3)
        saturated = x[(x.max(1).values - x.min(1).values) > 1.0]
        assert len(saturated) >= 4 * 6, name
        assert (saturated.mean(0) - colour).abs().max() < 0.25, name


def test_heldout_pairs_never_in_training_scenes():
    train = shapes.generate_scenes(2000, seed=0, exclude_heldout=True)
    held = shapes.generate_scenes(200, seed=1, exclude_heldout=False, only_heldout=True)
    pairs = [(shapes.kind_index(a), shapes.kind_index(b)) for a, b in shapes.HELDOUT_PAIRS]

    def has_pair(present):
        return torch.stack([(present[:, a] > 0) & (present[:, b] > 0) for a, b in pairs]).any(0)

    assert not has_pair(train.present).any()
    assert has_pair(held.present).all()


def test_shipped_evaluator_reads_heldout_scenes():
    """At least 98 % of fresh scenes (held-out pairs included, seeds the training never used) get their exact
    set of objects; the training pool used seed 1000."""
    clf, cfg = load_classifier(weights_path("shapes16_evaluator"))
    assert cfg.num_classes == shapes.NUM_KINDS and cfg.in_channels == 3
    for kw in ({"exclude_heldout": False}, {"exclude_heldout": False, "only_heldout": True}):
        sc = shapes.generate_scenes(400, seed=424242, **kw)
        with torch.no_grad():
            pred = (clf(sc.images) > 0).float()
        exact = (pred == sc.present).all(1).float().mean().item()
        print(kw, f"exact-set accuracy {exact:.4f}")
        assert exact >= 0.98


def test_shipped_text_model_file(tmp_path):
    path = weights_path("shapes16_unet")
    assert path.stat().st_size <= 5 * 1024 * 1024
    meta = read_metadata(path)
    assert meta["format"] == "dng-reference-text-unet/1"
    net = load_text_model(path)
    assert net.config.context_length == shapes.CONTEXT_LENGTH and net.config.in_channels == 3
    ctx = net.encoder.encode(["red circle", "", "blue square"])
    assert ctx.shape == (3, shapes.CONTEXT_LENGTH, net.config.context_dim)
    # one pathway for every prompt: the empty prompt is an encoding like any other, not zeros
    assert ctx[1].abs().mean() > 0.1
    x = torch.randn(3, 3, 16, 16)
    eps = net.unet(x, torch.full((3,), 500.0), ctx)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    # the prompt matters: red circle and blue square predict differently on the same input
    assert (eps[0] - eps[2]).abs().mean() > 1e-3 * eps.abs().mean()


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = TextDenoiser(TextUNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(1,))).eval()
    for p in net.parameters():  # the zero-initialised output layers would make the test vacuous
        p.data.normal_(0, 0.05)
    save_text_model(net, tmp_path / "m.safetensors", dtype=torch.float32)
    back = load_text_model(tmp_path / "m.safetensors")
    tok = shapes.tokenize_batch(["red circle", ""])
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, tok), net(x, t, tok))
