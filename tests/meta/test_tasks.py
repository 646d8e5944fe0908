"""N-way K-shot task sampler: shapes, labels, distinct classes and samples, limits of the data."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.meta import FewShotTask, check_task, sample_task, sample_tasks, stack_tasks


class Pool:
    """Class c, sample s is the constant image 1000 c + s (so a sample tells where it came from)."""

    def __init__(self, n_classes=10, per_class=8):
        self.n_classes, self.samples_per_class = n_classes, per_class

    def draw(self, cls, n, rng):
        who = rng.choice(self.samples_per_class, size=n, replace=False)
        return np.stack([np.full((1, 2, 2), 1000 * cls + s, dtype=np.float32) for s in who])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31))
def test_task_structure(n_way, k_shot, q_query, seed):
    task = sample_task(Pool(), n_way=n_way, k_shot=k_shot, q_query=q_query, rng=np.random.default_rng(seed))
    assert task.support_x.shape == (n_way * k_shot, 1, 2, 2)
    assert task.query_x.shape == (n_way * q_query, 1, 2, 2)
    assert task.support_y.tolist() == [c for c in range(n_way) for _ in range(k_shot)]
    assert task.query_y.tolist() == [c for c in range(n_way) for _ in range(q_query)]
    src_s = task.support_x[:, 0, 0, 0].long()
    src_q = task.query_x[:, 0, 0, 0].long()
    # one source class per label, distinct across labels; every example of a class is a distinct sample
    classes = [
        set((src_s[task.support_y == c] // 1000).tolist()) | set((src_q[task.query_y == c] // 1000).tolist())
        for c in range(n_way)
    ]
    assert all(len(c) == 1 for c in classes) and len(set().union(*classes)) == n_way
    for c in range(n_way):
        samples = torch.cat([src_s[task.support_y == c], src_q[task.query_y == c]]).tolist()
        assert len(set(samples)) == k_shot + q_query


def test_same_rng_same_task_and_labels_are_permuted():
    a = sample_task(Pool(), n_way=5, k_shot=2, q_query=1, rng=np.random.default_rng([1, 2]))
    b = sample_task(Pool(), n_way=5, k_shot=2, q_query=1, rng=np.random.default_rng([1, 2]))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    orders = set()
    for seed in range(20):
        t = sample_task(Pool(), n_way=5, k_shot=1, q_query=1, rng=np.random.default_rng(seed))
        orders.add(tuple((t.support_x[:, 0, 0, 0] // 1000).long().tolist()))
    assert len(orders) > 10


def test_batch_of_tasks():
    batch = sample_tasks(Pool(), 3, n_way=2, k_shot=2, q_query=3, rng=np.random.default_rng(0))
    assert batch.support_x.shape == (3, 4, 1, 2, 2) and batch.query_y.shape == (3, 6)
    check_task(batch, batched=True)


def test_n_or_k_too_large_raise():
    with pytest.raises(ValueError, match="n_way = 11 is larger than the 10 classes"):
        sample_task(Pool(), n_way=11, k_shot=1, q_query=1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"k_shot \+ q_query = 6 \+ 3 = 9 is larger than the 8 examples"):
        sample_task(Pool(), n_way=2, k_shot=6, q_query=3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="q_query must be a positive int"):
        sample_task(Pool(), n_way=2, k_shot=1, q_query=0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="stack_tasks needs at least one task"):
        stack_tasks([])


def test_check_task_rejects_empty_and_mismatched_sets():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="query set is empty"):
        check_task(FewShotTask(x, y, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="support set is empty"):
        check_task(FewShotTask(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), x, y))
    with pytest.raises(ValueError, match="one label per example"):
        check_task(FewShotTask(x, y[:3], x, y))
    with pytest.raises(ValueError, match="NaN"):
        check_task(FewShotTask(x, y, torch.full((4, 3), float("nan")), y))
