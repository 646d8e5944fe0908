"""Tests of neuromorph.data.store_recall against the official LSNN tutorial's store-recall generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.data import (
    StoreRecallBatch,
    per_char_mean,
    recall_error,
    recall_loss,
    store_recall_batch,
    store_recall_validity,
)

STORE, RECALL = 2, 3


# ---------------------------------------------------------------- literal reference (official semantics)
def official_validity(seq: np.ndarray) -> bool:
    """Plain loop version of validity_test (bin/tutorial_storerecall_utils.py)."""
    if not ((seq == RECALL).any() and (seq == STORE).any() and (seq < STORE).any()):
        return False
    if np.argmax(seq == RECALL) < np.argmax(seq == STORE):
        return False
    if -np.argmax(seq[::-1] == RECALL) < -np.argmax(seq[::-1] == STORE):
        return False
    stores = np.where(seq == STORE)[0]
    recalls = np.where(seq == RECALL)[0]
    for t in stores:
        if t == seq.size - 1 or seq[t + 1] in (RECALL, STORE):
            return False
    for a, b in zip(recalls[:-1], recalls[1:], strict=True):
        if not ((a < stores) & (stores < b)).any():
            return False
    for a, b in zip(stores[:-1], stores[1:], strict=True):
        if not ((a < recalls) & (recalls < b)).any():
            return False
    return True


def official_sequences(n: int, length: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """generate_input_with_prob, step by step (including the state carried over between rejections)."""
    out = np.zeros((n, length), dtype=int)
    for b in range(n):
        last = RECALL
        valid = False
        while not valid:
            seq = rng.choice([0, 1], size=length)
            for t in range(length):
                if last == RECALL and rng.random() < p:
                    seq[t], last = STORE, STORE
                elif last == STORE and rng.random() < p:
                    seq[t], last = RECALL, RECALL
            valid = official_validity(seq)
        out[b] = seq
    return out


def small_batch(n: int, seed: int = 0, **kw) -> StoreRecallBatch:
    kw.setdefault("char_ms", 1)
    return store_recall_batch(n, np.random.default_rng([seed, 0]), **kw)


# ---------------------------------------------------------------- shapes, determinism
def test_shapes_dtypes_defaults():
    b = store_recall_batch(4, np.random.default_rng([1, 2]))
    assert b.spikes.shape == (12 * 200, 4, 100) and b.spikes.dtype == torch.float32
    assert set(b.spikes.unique().tolist()) <= {0.0, 1.0}
    for t in (b.input_chars, b.target_chars):
        assert t.shape == (4, 12) and t.dtype == torch.int64
    assert b.recall_mask.dtype == torch.bool and torch.equal(b.recall_mask, b.input_chars == RECALL)


def test_same_rng_same_batch_and_dt():
    a = store_recall_batch(3, np.random.default_rng([7, 3]), char_ms=20)
    b = store_recall_batch(3, np.random.default_rng([7, 3]), char_ms=20)
    c = store_recall_batch(3, np.random.default_rng([7, 4]), char_ms=20)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.spikes, c.spikes)
    d = store_recall_batch(3, np.random.default_rng(0), char_ms=20, dt=0.5)
    assert d.spikes.shape == (12 * 40, 3, 100)
    moved = d.to("cpu")
    assert isinstance(moved, StoreRecallBatch) and all(
        torch.equal(x, y) for x, y in zip(d, moved, strict=True)
    )


# ---------------------------------------------------------------- sequence properties
def test_sequence_validity_and_targets_over_many_samples():
    b = small_batch(3000, n_in=4)
    seq, tgt = b.input_chars.numpy(), b.target_chars.numpy()
    for s, y in zip(seq, tgt, strict=True):
        assert official_validity(s)
        specials = s[s >= STORE]
        assert specials[0] == STORE and specials[-1] == RECALL
        assert np.all(specials[1:] != specials[:-1])  # a store between two recalls and vice versa
        last_store = None
        for t, ch in enumerate(s):
            if ch == STORE:
                assert s[t + 1] in (0, 1)
                last_store = t
            if ch == RECALL:
                assert y[t] == s[last_store + 1]  # the bit that accompanied the last store
            else:
                assert y[t] == ch


def test_distribution_matches_official_generator():
    n, p = 2000, 1 / 7
    ours = small_batch(n, seed=5, n_in=4).input_chars.numpy()
    ref = official_sequences(n, 12, p, np.random.default_rng(11))
    for ch in (STORE, RECALL):
        # per-position probability of a store / recall, and the overall recall probability
        np.testing.assert_allclose((ours == ch).mean(0), (ref == ch).mean(0), atol=0.035)
    assert abs((ours == RECALL).mean() - (ref == RECALL).mean()) < 0.01
    n_recalls = np.bincount((ours == RECALL).sum(1), minlength=6)[:6] / n
    n_recalls_ref = np.bincount((ref == RECALL).sum(1), minlength=6)[:6] / n
    np.testing.assert_allclose(n_recalls, n_recalls_ref, atol=0.035)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=6, max_size=6), min_size=1, max_size=20))
def test_vectorised_validity_equals_official(rows):
    seq = np.array(rows)
    assert store_recall_validity(seq).tolist() == [official_validity(s) for s in seq]


def test_vectorised_validity_exhaustive_length_7():
    seq = np.array(np.meshgrid(*[np.arange(4)] * 7, indexing="ij")).reshape(7, -1).T  # all 4**7 sequences
    ours = store_recall_validity(seq)
    assert ours.tolist() == [official_validity(s) for s in seq]
    assert 0 < ours.sum() < len(seq)


# ---------------------------------------------------------------- input channels
def test_channel_groups_and_store_copy_with_deterministic_spikes():
    # rate 1000 Hz at dt 1 ms -> spike probability 1: the spikes show the input gates exactly
    b = small_batch(2000, n_in=10, rate_hz=1000.0)
    groups = np.array_split(np.arange(10), 4)  # sizes 3, 3, 2, 2
    spk = b.spikes.numpy()  # [12, B, 10] (one step per character)
    gate = np.stack([spk[:, :, g].max(-1) for g in groups], -1)  # [12, B, 4]
    for g in groups:  # all channels of a group agree
        assert np.all(spk[:, :, g] == spk[:, :, g[:1]])
    gate = gate.transpose(1, 0, 2)  # [B, 12, 4]
    seq = b.input_chars.numpy()
    inverted, n_after = 0, 0
    for s, gt in zip(seq, gate, strict=True):
        for t, ch in enumerate(s):
            if ch == STORE:
                bit = s[t + 1]
                assert gt[t].tolist() == [bit == 0, bit == 1, 1, 0]
                n_after += 1
                inverted += gt[t + 1, bit] == 0
                assert gt[t + 1, 2:].tolist() == [0, 0] and gt[t + 1, :2].sum() == 1
            elif ch == RECALL:
                assert gt[t].tolist() == [0, 0, 0, 1]
            elif t == 0 or s[t - 1] != STORE:
                assert gt[t].tolist() == [ch == 0, ch == 1, 0, 0]
    assert abs(inverted / n_after - 0.5) < 0.05  # 50% inversion of the bit after a store


def test_poisson_rate_is_50_hz():
    b = store_recall_batch(16, np.random.default_rng([3, 0]), char_ms=200)
    spk = b.spikes.reshape(12, 200, 16, 100)
    groups = np.array_split(np.arange(100), 4)
    seq = b.input_chars.numpy().T  # [12, B]
    is_store = seq == STORE
    next_bit = np.zeros_like(seq)
    next_bit[:-1] = seq[1:]
    after_store = np.zeros_like(is_store)
    after_store[1:] = is_store[:-1]
    on = np.zeros((12, 16, 100), dtype=bool)
    for k, g in enumerate(groups):
        on[:, :, g] = (seq == k)[:, :, None]
        if k < 2:
            on[:, :, g] |= (is_store & (next_bit == k))[:, :, None]  # bit copied onto the store step
    known = ~after_store[:, :, None]  # the bit after a store may be inverted: leave those steps out

    def expand(mask):
        return torch.from_numpy(mask)[:, None].expand(12, 200, 16, 100)

    rate_on = spk[expand(on & known)].mean().item() * 1000.0
    assert abs(rate_on - 50.0) < 2.0
    assert spk[expand(~on & known)].sum() == 0


# ---------------------------------------------------------------- readout helpers
def test_per_char_mean_hand_case_and_grad():
    x = torch.arange(12.0).reshape(6, 1, 2).requires_grad_(True)  # T=6, B=1, K=2
    m = per_char_mean(x, 3)
    assert m.shape == (1, 3, 2)
    assert m[0].tolist() == [[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]
    m.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.5))
    with pytest.raises(ValueError, match="multiple of n_chars"):
        per_char_mean(torch.zeros(7, 1, 2), 3)


def _hand_batch() -> StoreRecallBatch:
    inp = torch.tensor([[2, 1, 3, 0], [0, 2, 0, 3]])
    tgt = torch.tensor([[2, 1, 1, 0], [0, 2, 0, 0]])
    return StoreRecallBatch(torch.zeros(4, 2, 4), inp, tgt, inp == 3)


def test_recall_error_and_loss_hand_case():
    batch = _hand_batch()
    logits = torch.zeros(2, 4, 2)
    logits[0, 2] = torch.tensor([0.0, 1.0])  # correct (target 1)
    logits[1, 3] = torch.tensor([0.0, 1.0])  # wrong (target 0)
    logits[0, 0] = torch.tensor([5.0, -5.0])  # non-recall chars are ignored
    assert recall_error(logits, batch).item() == pytest.approx(0.5)
    lse = torch.logsumexp(torch.tensor([0.0, 1.0]), 0).item()
    expected = ((lse - 1.0) + (lse - 0.0)) / 2
    assert recall_loss(logits, batch).item() == pytest.approx(expected, rel=1e-6)
    logits.requires_grad_(True)
    recall_loss(logits, batch).backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() > 0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8))
def test_recall_error_in_unit_interval_and_zero_when_perfect(seed, n):
    batch = small_batch(n, seed=seed, n_in=4)
    rng = torch.Generator().manual_seed(seed)
    err = recall_error(torch.randn(n, 12, 2, generator=rng), batch).item()
    assert 0.0 <= err <= 1.0
    perfect = torch.nn.functional.one_hot(batch.target_chars.clamp(max=1), 2).float() * 30
    assert recall_error(perfect, batch).item() == 0.0
    assert recall_error(-perfect, batch).item() == 1.0
    assert recall_loss(perfect, batch).item() < 1e-6


# ---------------------------------------------------------------- argument validation
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"batch_size": 0}, r"batch_size must be a positive int, got 0"),
        ({"batch_size": 2.0}, r"batch_size must be a positive int"),
        ({"p_store_recall": 0.0}, r"p_store_recall must be a finite number in \(0.0, 1.0\), got 0.0"),
        ({"p_store_recall": 1.0}, r"p_store_recall .* got 1.0"),
        ({"n_in": 3}, r"n_in must be an int >= 4 .* got 3"),
        ({"n_chars": 2}, r"n_chars must be an int >= 3"),
        ({"char_ms": 200, "dt": 3.0}, r"char_ms/dt must be a whole number"),
        ({"rate_hz": -1.0}, r"rate_hz must be"),
        ({"rate_hz": 2000.0}, r"rate_hz \* dt / 1000"),
        ({"rng": 0}, r"rng must be a numpy.random.Generator"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    args = {"batch_size": 2, "rng": np.random.default_rng(0)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        store_recall_batch(args.pop("batch_size"), args.pop("rng"), char_ms=args.pop("char_ms", 1), **args)


def test_recall_helpers_reject_bad_shapes():
    batch = _hand_batch()
    with pytest.raises(ValueError, match="char_logits.shape"):
        recall_error(torch.zeros(2, 5, 2), batch)
    with pytest.raises(ValueError, match="3-D"):
        recall_loss(torch.zeros(2, 4), batch)
