"""Store-recall task of the LSNN tutorial (Bellec et al. 2018; task described in arXiv:1901.09049v1).

Re-implementation of ``bin/tutorial_storerecall_utils.py`` (``generate_input_with_prob``, ``validity_test``,
``generate_data``, ``generate_mikolov_data``, ``generate_storerecall_data``, ``error_rate``) and of the loss
of ``bin/tutorial_storerecall_with_LSNN.py`` in IGITUGraz/LSNN-official, vectorised over the batch.

A sequence has ``n_chars`` characters of ``char_ms`` ms each. A character is a bit (0 or 1), a *store*
(2) or a *recall* (3). Specials alternate (store, recall, store, ...); a store is always followed by a
bit, and the network must output, during every recall, the bit that followed the last store.
The input is 4 equal groups of Poisson channels (``np.array_split`` of ``n_in``: bit 0, bit 1, store,
recall) firing at ``rate_hz`` while their character is shown. As in the official code, the bit that
follows a store is also shown on the store step itself, and with probability 0.5 the bit channels of
the step after the store are inverted (the store step carries the truth).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BIT_0",
    "BIT_1",
    "STORE",
    "RECALL",
    "StoreRecallBatch",
    "store_recall_batch",
    "store_recall_validity",
    "per_char_mean",
    "recall_error",
    "recall_loss",
]

BIT_0, BIT_1, STORE, RECALL = 0, 1, 2, 3
_N_SYMBOLS = 4
_MAX_CANDIDATES = 50_000_000  # rejection-sampling guard (characters drawn in total)


class StoreRecallBatch(NamedTuple):
    """One batch of the store-recall task (time-major spikes, per-character labels)."""

    spikes: torch.Tensor  # [T, B, n_in] float32 of 0/1, T = n_chars * char_ms / dt
    input_chars: torch.Tensor  # [B, n_chars] int64: 0/1 bits, 2 store, 3 recall
    target_chars: torch.Tensor  # [B, n_chars] int64: the stored bit at recalls, else the input char
    recall_mask: torch.Tensor  # [B, n_chars] bool, True at recall characters

    def to(self, device: torch.device | str) -> StoreRecallBatch:
        """The same batch with every tensor moved to ``device``."""
        return StoreRecallBatch(*(t.to(device) for t in self))


def _check_int(name: str, value: object, minimum: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        allowed = what or (f"an int >= {minimum}" if minimum != 1 else "a positive int")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _check_float(name: str, value: object, *, low: float, low_open: bool, high: float | None = None) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and (high is None or v < high)
    if not ok:
        left = "(" if low_open else "["
        right = f"{high})" if high is not None else "inf)"
        raise ValueError(f"{name} must be a finite number in {left}{low}, {right}, got {value!r}")
    return float(value)


def _steps_per_char(char_ms: float, dt: float) -> int:
    ratio = char_ms / dt
    steps = round(ratio)
    if steps < 1 or abs(ratio - steps) > 1e-9 * max(1.0, ratio):
        raise ValueError(
            f"char_ms/dt must be a whole number of steps >= 1, "
            f"got char_ms={char_ms!r}, dt={dt!r} (ratio {ratio!r})"
        )
    return steps


def store_recall_validity(seq: np.ndarray) -> np.ndarray:
    """Vectorised ``validity_test`` of ``bin/tutorial_storerecall_utils.py`` (LSNN-official).

    ``seq``: int array [N, L] of characters (0/1 bits, 2 store, 3 recall). Returns bool [N]: True where
    the sequence has at least one store, one recall and one bit; the first store precedes the first
    recall; the last recall follows the last store; every store is followed by a bit; and between two
    recalls there is a store and between two stores a recall (specials alternate).
    """
    seq = np.asarray(seq)
    if seq.ndim != 2:
        raise ValueError(f"seq must be a 2-D int array [N, L], got shape {seq.shape}")
    length = seq.shape[1]
    is_store = seq == STORE
    is_recall = seq == RECALL
    valid = is_store.any(1) & is_recall.any(1) & (seq < STORE).any(1)
    # first store before first recall (argmax of an all-False row is 0, as in the official code)
    valid &= np.argmax(is_recall, 1) >= np.argmax(is_store, 1)
    # last recall after last store
    valid &= np.argmax(is_recall[:, ::-1], 1) <= np.argmax(is_store[:, ::-1], 1)
    # every store is followed by a bit (and is not the last character)
    next_is_bit = np.zeros_like(is_store)
    next_is_bit[:, :-1] = seq[:, 1:] < STORE
    valid &= ~(is_store & ~next_is_bit).any(1)
    # specials alternate: no special is preceded (among specials) by the same special
    special = is_store | is_recall
    idx = np.where(special, np.arange(length), -1)
    prev_idx = np.full_like(idx, -1)
    prev_idx[:, 1:] = np.maximum.accumulate(idx, axis=1)[:, :-1]
    prev_char = np.take_along_axis(seq, np.maximum(prev_idx, 0), axis=1)
    repeated = special & (prev_idx >= 0) & (prev_char == seq)
    valid &= ~repeated.any(1)
    return valid


def _candidate_sequences(n: int, length: int, p_store: float, p_recall: float, rng) -> np.ndarray:
    """``generate_input_with_prob`` without the rejection step: random bits overwritten by specials.

    Each step draws one uniform number: waiting for a store (after a recall, or at the start) a store
    is placed with probability ``p_store``; waiting for a recall (after a store) a recall is placed
    with probability ``p_recall``.
    """
    seq = rng.integers(0, 2, size=(n, length))
    u = rng.random((n, length))
    waiting_store = np.ones(n, dtype=bool)
    for t in range(length):
        put_store = waiting_store & (u[:, t] < p_store)
        put_recall = ~waiting_store & (u[:, t] < p_recall)
        seq[put_store, t] = STORE
        seq[put_recall, t] = RECALL
        waiting_store = (waiting_store & ~put_store) | put_recall
    return seq


def _sample_sequences(batch_size: int, n_chars: int, p: float, rng) -> np.ndarray:
    out = np.empty((batch_size, n_chars), dtype=np.int64)
    filled, drawn, accepted_total = 0, 0, 0
    while filled < batch_size:
        need = batch_size - filled
        rate = (accepted_total + 1) / (drawn + 1) if drawn else 0.5
        n = int(min(max(2 * need / rate, 64), 1_000_000))
        cand = _candidate_sequences(n, n_chars, p, p, rng)
        good = cand[store_recall_validity(cand)]
        take = min(len(good), need)
        out[filled : filled + take] = good[:take]
        filled += take
        drawn += n
        accepted_total += len(good)
        if filled < batch_size and drawn * n_chars > _MAX_CANDIDATES:
            raise RuntimeError(
                f"store-recall rejection sampling accepted {accepted_total} of {drawn} sequences; "
                f"p_store_recall={p} is too small for n_chars={n_chars}"
            )
    return out


def store_recall_batch(
    batch_size: int,
    rng: np.random.Generator,
    *,
    n_chars: int = 12,
    char_ms: float = 200,
    n_in: int = 100,
    rate_hz: float = 50.0,
    p_store_recall: float = 1 / 7,
    dt: float = 1.0,
) -> StoreRecallBatch:
    """Sample a store-recall batch exactly as ``generate_storerecall_data`` of LSNN-official.

    Defaults are the tutorial's flags (``bin/tutorial_storerecall_with_LSNN.py``): ``seq_len`` 12
    characters of ``tau_char`` 200 ms, ``n_in`` 100, ``f0`` 50 Hz, 2 bit characters and
    ``p_store = p_recall = 1 / (1 + seq_delay)`` with ``seq_delay`` 6.

    Sequences are drawn by rejection sampling (``generate_input_with_prob`` + ``validity_test``). The
    bit after each store is copied onto the store step and, with probability 0.5, the bit channels of
    the step after the store are inverted (``generate_mikolov_data``). Each of the 4 input groups
    fires Poisson spikes with probability ``rate_hz * dt / 1000`` per step while its channel is on.
    ``target_chars`` is the input char, except at recalls where it is the bit that followed the last
    store (``input_chars[t_store + 1]``). All randomness comes from ``rng``: the same generator state
    gives the same batch.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator (e.g. np.random.default_rng([seed, iteration])), "
            f"got {type(rng).__name__}"
        )
    n_chars = _check_int("n_chars", n_chars, 3, "an int >= 3 (store, bit, recall)")
    n_in = _check_int(
        "n_in", n_in, _N_SYMBOLS, "an int >= 4 (one channel per group: bit 0, bit 1, store, recall)"
    )
    char_ms = _check_float("char_ms", char_ms, low=0.0, low_open=True)
    dt = _check_float("dt", dt, low=0.0, low_open=True)
    rate_hz = _check_float("rate_hz", rate_hz, low=0.0, low_open=False)
    p = _check_float("p_store_recall", p_store_recall, low=0.0, low_open=True, high=1.0)
    steps = _steps_per_char(char_ms, dt)
    p_spike = rate_hz * dt / 1000.0
    if p_spike > 1.0:
        raise ValueError(
            f"rate_hz * dt / 1000 (spike probability per step) must be <= 1, got rate_hz={rate_hz}, dt={dt}"
        )

    seq = _sample_sequences(batch_size, n_chars, p, rng)

    # targets (generate_data): at a recall, the bit that followed the previous (= last) store
    pos = np.arange(n_chars)
    store_pos = np.where(seq == STORE, pos, -1)
    last_store = np.maximum.accumulate(store_pos, axis=1)
    is_recall = seq == RECALL
    stored_bit = np.take_along_axis(seq, np.minimum(np.maximum(last_store, 0) + 1, n_chars - 1), axis=1)
    target = np.where(is_recall, stored_bit, seq)

    # input gates (generate_mikolov_data): one-hot, bit copied onto store step, 50% inversion after it
    gates = seq[:, :, None] == np.arange(_N_SYMBOLS)  # [B, L, 4] bool
    is_store = seq == STORE
    flip = rng.random((batch_size, n_chars)) < 0.5  # one draw per store step in the official code
    next_bits = np.zeros((batch_size, n_chars, 2), dtype=bool)
    next_bits[:, :-1] = gates[:, 1:, :2]
    gates[:, :, :2] = np.where(is_store[:, :, None], next_bits, gates[:, :, :2])
    flip_next = np.zeros_like(is_store)  # the step after a store whose coin came up "invert"
    flip_next[:, 1:] = (is_store & flip)[:, :-1]
    gates[:, :, :2] ^= flip_next[:, :, None]

    # Poisson spikes, channel groups = np.array_split(arange(n_in), 4)
    group_of_channel = np.concatenate(
        [np.full(len(g), k) for k, g in enumerate(np.array_split(np.arange(n_in), _N_SYMBOLS))]
    )
    channel_on = gates[:, :, group_of_channel]  # [B, L, n_in]
    spikes = np.empty((n_chars * steps, batch_size, n_in), dtype=np.float32)
    for c in range(n_chars):
        u = rng.random((steps, batch_size, n_in), dtype=np.float32)
        spikes[c * steps : (c + 1) * steps] = (u < p_spike) & channel_on[None, :, c, :]

    return StoreRecallBatch(
        spikes=torch.from_numpy(spikes),
        input_chars=torch.from_numpy(seq.astype(np.int64)),
        target_chars=torch.from_numpy(target.astype(np.int64)),
        recall_mask=torch.from_numpy(is_recall),
    )


def per_char_mean(x: torch.Tensor, n_chars: int) -> torch.Tensor:
    """Mean of a time-major signal over each character: [T, B, K] -> [B, n_chars, K] (differentiable).

    Same as ``tf_downsample(out, new_size=n_chars, axis=1)`` in LSNN-official
    (``lsnn/toolbox/tensorflow_utils.py``): T is split into ``n_chars`` equal consecutive blocks.
    """
    n_chars = _check_int("n_chars", n_chars, 1)
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a 3-D tensor [T, B, K], got {getattr(x, 'shape', type(x).__name__)}")
    t, b, k = x.shape
    if t % n_chars:
        raise ValueError(f"x.shape[0] (T={t}) must be a multiple of n_chars={n_chars}")
    return x.reshape(n_chars, t // n_chars, b, k).mean(1).permute(1, 0, 2)


def _recall_logits_targets(char_logits: torch.Tensor, batch: StoreRecallBatch):
    if not isinstance(char_logits, torch.Tensor) or char_logits.dim() != 3:
        raise ValueError(
            f"char_logits must be a 3-D tensor [B, n_chars, n_classes], "
            f"got {getattr(char_logits, 'shape', type(char_logits).__name__)}"
        )
    if tuple(char_logits.shape[:2]) != tuple(batch.recall_mask.shape):
        raise ValueError(
            f"char_logits.shape[:2] must equal the batch's [B, n_chars] = {tuple(batch.recall_mask.shape)}, "
            f"got {tuple(char_logits.shape[:2])}"
        )
    mask = batch.recall_mask.to(char_logits.device)
    target = batch.target_chars.to(char_logits.device)[mask]
    if target.numel() == 0:
        raise ValueError("batch has no recall characters")
    if int(target.max()) >= char_logits.shape[2]:
        raise ValueError(
            f"char_logits needs at least {int(target.max()) + 1} classes, got {char_logits.shape[2]}"
        )
    return char_logits[mask], target


def recall_error(char_logits: torch.Tensor, batch: StoreRecallBatch) -> torch.Tensor:
    """Recall error rate: fraction of recall characters whose argmax differs from the target.

    ``char_logits``: [B, n_chars, n_classes] (e.g. ``per_char_mean`` of the readout). Second output
    (``recall_errors``) of ``error_rate`` in ``bin/tutorial_storerecall_utils.py``. Scalar float tensor.
    """
    logits, target = _recall_logits_targets(char_logits, batch)
    return (logits.argmax(-1) != target).float().mean()


def recall_loss(char_logits: torch.Tensor, batch: StoreRecallBatch) -> torch.Tensor:
    """Mean softmax cross-entropy over the recall characters only (``loss_recall`` of
    ``bin/tutorial_storerecall_with_LSNN.py``: sparse softmax CE on the per-character readout)."""
    logits, target = _recall_logits_targets(char_logits, batch)
    return F.cross_entropy(logits, target)
