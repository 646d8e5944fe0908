import pytest

TINY_STORE_RECALL = [
    "--set", "n_in=8", "--set", "n_lif=3", "--set", "n_alif=3", "--set", "n_chars=4",
    "--set", "char_ms=20", "--set", "batch_size=4", "--set", "iterations=6",
    "--set", "test_batches=1", "--set", "checkpoint_every=2", "--set", "stop_window=50",
    "--set", "n_delay=3",
]  # fmt: skip


@pytest.fixture
def tiny_store_recall():
    return list(TINY_STORE_RECALL)
