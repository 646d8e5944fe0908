"""Export / save / read / load of an sMNIST-sized LIF network through NIR, and its round trip.

    .venv/bin/python benchmarks/nir_export.py

Network: RecurrentSpikingLayer(80 -> 220 LIF, 10 delays, refractory 5) + LeakyReadout(220 -> 10), the
LIF-only smnist network. Prints wall times (median of 3), the .nir file size and whether the reloaded
network gives identical outputs on a batch of 8 sequences of 840 steps (native layers from metadata, and
the plain-NIR graph that other tools see, which runs its recurrent cycle step by step).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import neuromorph.nir as nmnir
from neuromorph.layers import LeakyReadout, RecurrentSpikingLayer
from neuromorph.layers.sequential import SpikingSequential


def _median(fn, repeats=3):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    model = SpikingSequential(
        {
            "rsnn": RecurrentSpikingLayer(80, 220, 0, n_refractory=5, n_delay=10, generator=g),
            "readout": LeakyReadout(220, 10, bias=True, generator=g),
        }
    )
    x = (torch.rand(840, 8, 80, generator=g) < 0.05).float()
    warnings.simplefilter("ignore", nmnir.NIRConventionWarning)
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "smnist_lif.nir"
        t_export, graph = _median(lambda: nmnir.export(model, x[:1]))
        t_save, _ = _median(lambda: nmnir.save(graph, path))
        t_read, back = _median(lambda: nmnir.read(path))
        t_load, net = _median(lambda: nmnir.load(back))
        t_model, want = _median(lambda: model(x)[0])
        t_native, got = _median(lambda: net(x)[0])
        plain = nmnir.load(back, use_metadata=False)
        t_plain, _ = _median(lambda: plain(x)[0], repeats=1)
        print(f"nodes {len(graph.nodes)}, edges {len(graph.edges)}, file {path.stat().st_size / 1e6:.2f} MB")
        print(f"export {t_export * 1e3:.0f} ms, save {t_save * 1e3:.0f} ms, read {t_read * 1e3:.0f} ms, "
              f"load {t_load * 1e3:.0f} ms")  # fmt: skip
        print(f"forward T=840 B=8: original {t_model * 1e3:.0f} ms, reloaded {t_native * 1e3:.0f} ms, "
              f"plain-NIR graph (step-wise cycle) {t_plain * 1e3:.0f} ms")  # fmt: skip
        print(f"identical outputs after the round trip: {torch.equal(got, want)}")


if __name__ == "__main__":
    main()
