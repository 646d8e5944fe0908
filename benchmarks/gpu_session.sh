#!/usr/bin/env bash
# One GPU session (run by the `device` tool from the repository root; ~8 min on an H100/H200):
#   0. issue 9, when WEATHER_RUN names a finished `neuromorph run weather` directory carried with the tree:
#      `benchmarks/diffusion.py --device cuda` (batched vs one-patch sampler, DPM-Solver++ 10 vs DDIM 25);
#      the session stops here if it fails;
#   1. the Triton kernels compiled for the GPU against the reference and the fused path (the CPU tests
#      run them under Triton's interpreter only);
#   2. `neuromorph bench --device cuda` on cases a, b, c (neuromorph = Triton paths, eager, and the peers
#      that import), results in $OUT;
#   3. the long-sequence memory check on CUDA.
# The device machine has its own torch (CUDA) and no internet: mlxtend and the peers come from wheels
# carried in .whl/ (pip install --no-index --no-deps), the rest of neuromorph from src/.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ -n "${WEATHER_RUN:-}" ]; then
  timeout 240 python3 benchmarks/diffusion.py --device cuda --checkpoint "$WEATHER_RUN" --repeats 3 --paper-size \
    --paper-stride 16 --paper-steps 5 --memory-mb 4096 --json "$OUT/diffusion-cuda.json" 2>&1 | tee "$OUT/diffusion.txt" || exit 1
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/triton_equality.txt"
import torch
from neuromorph.kernels.lif_sequence import lif_sequence
from neuromorph.kernels.alif_sequence import alif_sequence
from neuromorph.neurons.lif import LIFParameters, lif_initial_state
from neuromorph.neurons.alif import ALIFParameters, ALIFState
dev = torch.device("cuda")
g = torch.Generator(device="cpu").manual_seed(0)
T, B, N = 300, 16, 257
cur = (torch.randn(T, B, N, generator=g) * 0.05 + 0.02).to(dev).requires_grad_()
p = LIFParameters(tau_mem=torch.full((N,), 20.0, device=dev), threshold=torch.full((N,), 0.01, device=dev), n_refractory=2)
r = torch.randn(T, B, N, generator=g).to(dev)
out = {}
for impl in ("reference", "fused", "triton"):
    z, _ = lif_sequence(cur, lif_initial_state(B, N, device=dev), p, impl)
    (gc,) = torch.autograd.grad((z * r).sum(), cur)
    out[impl] = (z.detach(), gc)
for impl in ("fused", "triton"):
    print("lif", impl, "spikes equal", torch.equal(out[impl][0], out["reference"][0]), "grad max abs diff", float((out[impl][1] - out["reference"][1]).abs().max()))
D = 3
ext = (torch.randn(T + D, B, N, generator=g) * 0.05 + 0.02).to(dev).requires_grad_()
w = (torch.randn(D, N, N, generator=g) * 0.01).to(dev).requires_grad_()
pa = ALIFParameters(tau_mem=20.0, tau_adapt=200.0, beta=torch.cat([torch.zeros(N // 2), torch.full((N - N // 2,), 1.7)]).to(dev), threshold=0.01, n_refractory=2)
z0 = torch.zeros(B, N, device=dev)
st = ALIFState(z0, z0.clone(), z0.clone(), z0.clone())
pend = torch.zeros(B, D, N, device=dev)
res = {}
for impl in ("reference", "fused", "triton"):
    o = alif_sequence(ext, w, st, pend, pa, impl)
    res[impl] = (o.z.detach(), *torch.autograd.grad((o.z * r).sum(), (ext, w)))
for impl in ("fused", "triton"):
    print("alif", impl, "spike flips", int((res[impl][0] != res["reference"][0]).sum()), "of", int(res["reference"][0].sum()),
          "grad diffs", [float((a - b).abs().max()) for a, b in zip(res[impl][1:], res["reference"][1:])])
PY
timeout 200 python3 -m neuromorph.cli bench --device cuda --case a b c --repeats 10 --warmup 3 --json "$OUT/bench-cuda.json" 2>&1 | tail -20 | tee "$OUT/bench.txt"
timeout 100 python3 benchmarks/long_sequence.py --device cuda --configs eager fused fused+ckpt auto --json "$OUT/long-sequence-cuda.json" 2>&1 | tail -6
