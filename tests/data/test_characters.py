"""KanjiVG stroke characters (rendered drawers, alphabets, disjoint split, rotations) and Omniglot loading."""

import numpy as np
import pytest

from neuromorph.data.characters import (
    Character,
    OmniglotCharacters,
    RenderedCharacters,
    _parse_path,
    kanjivg_characters,
    load_omniglot,
    render_character,
    split_by_alphabet,
    strokes,
)
from neuromorph.meta import sample_task


def test_svg_path_parsing_by_hand():
    # absolute move, relative cubic, smooth cubic (reflected control point), relative line
    seg = _parse_path("M10,20c1,2,3,4,5,6s7,8,9,10l1-1")
    assert seg.shape == (3, 4, 2)
    np.testing.assert_allclose(seg[0], [[10, 20], [11, 22], [13, 24], [15, 26]])
    np.testing.assert_allclose(seg[1], [[15, 26], [17, 28], [22, 34], [24, 36]])  # c1 = 2*(15,26)-(13,24)
    np.testing.assert_allclose(seg[2], [[24, 36], [24, 36], [25, 35], [25, 35]])


@pytest.fixture(scope="module")
def chars():
    return kanjivg_characters()


def test_alphabets_and_disjoint_split(chars):
    assert len(chars) > 1000
    sizes = {}
    for c in chars:
        sizes[c.alphabet] = sizes.get(c.alphabet, 0) + 1
        assert 1 <= len(c.paths) <= 12
    assert min(sizes.values()) >= 20 and len(sizes) > 10
    train, test = split_by_alphabet(chars, test_fraction=0.4, seed=0)
    assert {c.code for c in train}.isdisjoint({c.code for c in test})
    assert {c.alphabet for c in train}.isdisjoint({c.alphabet for c in test})
    assert len(train) + len(test) == len(chars)
    # tasks from the meta-test pool only hold meta-test characters
    pool = RenderedCharacters(test[:30], drawers=6, rotations=False)
    task = sample_task(pool, n_way=5, k_shot=1, q_query=1, rng=np.random.default_rng(0))
    assert task.support_x.shape == (5, 1, 28, 28)
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_alphabet(chars, test_fraction=1.0)


def test_drawers_are_deterministic_and_differ(chars):
    c = chars[0]
    a = render_character(c, np.random.default_rng([0, c.code, 1]))
    b = render_character(c, np.random.default_rng([0, c.code, 1]))
    d = render_character(c, np.random.default_rng([0, c.code, 2]))
    assert a.shape == (28, 28) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, d)
    assert a.sum() > 10  # ink on the page
    # two drawings of one character are closer than drawings of two different characters
    other = render_character(chars[-1], np.random.default_rng([0, chars[-1].code, 1]))
    assert np.abs(a - d).sum() < np.abs(a - other).sum()


def test_rotations_are_extra_classes(chars):
    pool = RenderedCharacters(chars[:3], drawers=4, rotations=True)
    assert pool.n_classes == 12 and pool.samples_per_class == 4
    base = pool.draw(0, 4, np.random.default_rng(5))
    turned = pool.draw(1, 4, np.random.default_rng(5))
    np.testing.assert_array_equal(turned[:, 0], np.rot90(base[:, 0], 1, axes=(1, 2)))
    with pytest.raises(ValueError, match="examples per class"):
        sample_task(pool, n_way=2, k_shot=3, q_query=2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="drawers must be a positive int"):
        RenderedCharacters(chars[:3], drawers=0)


def _fake_omniglot(root, split, alphabets=2, chars=3, drawers=4):
    from PIL import Image

    for a in range(alphabets):
        for c in range(chars):
            folder = root / f"images_{split}" / f"Alphabet_{a}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(drawers):
                img = np.full((105, 105), 255, dtype=np.uint8)
                img[10 + 10 * c : 20 + 10 * c, 10 + 20 * a : 30 + 20 * a] = 0  # black ink
                Image.fromarray(img).save(folder / f"{a}{c}_{d:02d}.png")


def test_omniglot_loader(tmp_path):
    _fake_omniglot(tmp_path, "background")
    pool = load_omniglot(tmp_path, "background")
    assert pool.images.shape == (6, 4, 28, 28) and pool.samples_per_class == 4
    assert pool.images.max() == pytest.approx(1.0) and pool.images.min() == 0.0  # inverted: ink = 1
    assert pool.names[0] == "Alphabet_0/character01"
    rotated = OmniglotCharacters(pool.images, rotations=True)
    assert rotated.n_classes == 24
    task = sample_task(rotated, n_way=3, k_shot=2, q_query=2, rng=np.random.default_rng(0))
    assert task.query_x.shape == (6, 1, 28, 28)


def test_omniglot_missing_says_where_to_put_it(tmp_path):
    with pytest.raises(ValueError, match=r"Omniglot not found: expected .*images_evaluation.*brendenlake"):
        load_omniglot(tmp_path, "evaluation")
    with pytest.raises(ValueError, match="split must be one of"):
        load_omniglot(tmp_path, "train")
    (tmp_path / "images_background" / "A").mkdir(parents=True)
    with pytest.raises(ValueError, match="no <alphabet>/<character> folders"):
        load_omniglot(tmp_path, "background")


def test_empty_character_list_raises():
    with pytest.raises(ValueError, match="characters must not be empty"):
        RenderedCharacters([])
    c = kanjivg_characters()[0]
    assert isinstance(c, Character) and all(s.shape[1:] == (4, 2) for s in strokes(c))
