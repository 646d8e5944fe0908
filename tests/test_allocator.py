"""allocator.tune_allocator: with it, glibc serves a large block from the heap (reused after free) instead
of a fresh mmap that is unmapped on free and page-faulted in again at the next iteration."""

import subprocess
import sys
import textwrap

import pytest

from neuromorph.allocator import tune_allocator

# bytes glibc holds in mmap'd blocks (mallinfo2().hblkhd) grow by a 64 MiB tensor's size, or not
_PROBE = textwrap.dedent(
    """
    import ctypes, torch
    from neuromorph.allocator import tune_allocator
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    print(tune_allocator(), end=" ")
    before = libc.mallinfo2().hblkhd
    x = torch.ones(16 << 20)
    print(libc.mallinfo2().hblkhd - before)
    """
)


def _probe(mallopt: str) -> tuple[str, int]:
    env = {"NEUROMORPH_MALLOPT": mallopt, "OMP_NUM_THREADS": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, grown = out.stdout.split()
    return tuned, int(grown)


def test_opt_out_does_nothing():
    assert tune_allocator({"NEUROMORPH_MALLOPT": "0"}) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_large_block_comes_from_the_heap_once_tuned():
    try:
        tuned, grown = _probe("1")
    except subprocess.CalledProcessError as err:  # no glibc 2.33+ (mallinfo2): nothing to check
        pytest.skip(f"mallinfo2 not available: {err.stderr[-200:]}")
    assert tuned == "True" and grown == 0
    assert _probe("0") == ("False", pytest.approx(64 << 20, rel=0.01))  # the glibc default: its own mmap
