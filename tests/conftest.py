"""Test-wide setup: Triton kernels run in Triton's interpreter on CPU (set before triton is imported;
a GPU check sets ``TRITON_INTERPRET=0`` to compile them instead)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
