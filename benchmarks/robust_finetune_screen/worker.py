"""Finetune-variant screen (docs/robustness.md): load a finished robust-conversion run's converted
robust SNN, finetune it with overridden settings exactly as the recipe does, evaluate with the
recipe's full quick evaluation.
Usage: worker.py SRC_RUN OUT_DIR DEVICE [key=value ...]; prints one JSON line."""

import copy
import json
import resource
import sys
import time

import torch

from neuromorph.distributed import DistInfo
from neuromorph.recipes import robust_conversion as rc
from neuromorph.recipes._common import (
    Context,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_module_tensors,
)
from neuromorph.runs import Run, StopFlag

torch.set_num_threads(1)


def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


src, out, device, sets = sys.argv[1], sys.argv[2], torch.device(sys.argv[3]), sys.argv[4:]
src_run = Run.open(src, is_writer=False)
cfg = apply_overrides(config_from_dict(rc.Config, src_run.config), sets)
cfg.validate()
tensors, meta = src_run.load_checkpoint()
run = Run.create(rc.NAME, config_to_dict(cfg), out=out)
ctx = Context(
    run=run, dist=DistInfo(0, 1, 0, True, device), device=device, progress=False, stop=StopFlag(), resume=None
)
data = rc._Data(cfg)
calibration = data.calibration(cfg, ctx.device)
nets = {"ann_robust": rc._build_ann(cfg, rc.seeded_generator(cfg.seed, rc._ROLE["ann_robust"])).to(device)}
load_module_tensors("ann_robust.", nets["ann_robust"], {k: v.to(device) for k, v in tensors.items()})
skel = rc.convert(
    nets["ann_robust"].eval(),
    [calibration[0][:2]],
    steps=cfg.conversion.steps,
    reset=cfg.conversion.reset,
    min_threshold=cfg.conversion.min_threshold,
    surrogate=rc.surrogate_from_name(cfg.finetune.surrogate, **rc._surrogate_kwargs(cfg)),
    calibration_steps=1,
)
load_module_tensors("snn_converted_robust.", skel, {k: v.to(device) for k, v in tensors.items()})
nets["snn_finetuned"] = copy.deepcopy(skel).to(device)
st = rc._State()
t0, c0 = time.perf_counter(), cpu()
st.stage = "snn_finetuned"
rc._train_stage(cfg, ctx, data, st, nets, {}, {}, lambda *a: None)
c1, t1 = cpu(), time.perf_counter()
rc._eval_stage(cfg, ctx, data, st, "snn_finetuned", nets["snn_finetuned"].eval())
r = st.results["snn_finetuned"]
ref = meta["results"]
print(
    "RESULT "
    + json.dumps(
        {
            "src": src,
            "device": str(device),
            "sets": sets,
            "seed": cfg.seed,
            "clean": r["clean"],
            "ensemble": r["ensemble"],
            "ann_robust_ensemble": ref["ann_robust"]["ensemble"],
            "gap": round(r["ensemble"] - ref["ann_robust"]["ensemble"], 4),
            "src_finetuned_ensemble": ref["snn_finetuned"]["ensemble"],
            "finetune": st.results.get("finetune"),
            "finetune_s": round(t1 - t0, 1),
            "eval_s": round(time.perf_counter() - t1, 1),
            "cpu_s": round(cpu() - c0, 1),
            "attacks": r["attacks"],
        }
    ),
    flush=True,
)
