"""Robust-conversion finetuning screen (docs/robustness.md) on a GPU machine: GPU baselines for new seeds,
finetune variants on GPU and CPU workers. Usage: driver.py GPU_SLOTS CPU_SLOTS STOP_CPU_S STOP_GPU_S KILL_S
(no new CPU / GPU job after STOP_*, everything killed at KILL). Research tooling, not part of the library."""

import json
import os
import subprocess
import sys
import tarfile
import time

OUT = os.environ.get("OUT", "/tmp/out")
os.makedirs(OUT, exist_ok=True)
T0 = time.time()
GPU_SLOTS, CPU_SLOTS = int(sys.argv[1]), int(sys.argv[2])
STOP_CPU, STOP_GPU, KILL = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("SRC_DIR", ".gpu/rc")
RUNS = os.environ.get("RUNS", "/tmp/rcruns")
os.makedirs(RUNS, exist_ok=True)
VARIANTS = {
    "V0": [],
    "V1_beta4": ["finetune.beta=4"],
    "V2_paths4": ["finetune.attack_gradients=[bptt-pcw-0.5,bptt-pcw-2,bptt-exp-1,ann-twin]"],
    "V3_ep3_lr005": ["finetune.epochs=3", "finetune.lr=0.005"],
    "V4_beta6": ["finetune.beta=6"],
    "V5_ep3_twin_beta4": [
        "finetune.epochs=3",
        "finetune.attack_gradients=[bptt-pcw-1,ann-twin]",
        "finetune.beta=4",
    ],
    "V6_ep4_paths4": [
        "finetune.epochs=4",
        "finetune.attack_gradients=[bptt-pcw-0.5,bptt-pcw-2,bptt-exp-1,ann-twin]",
    ],
}
BASE_SEEDS = [3, 4, 5, 6, 7]
jobs = [dict(name=f"base_s{s}", kind="base", seed=s) for s in BASE_SEEDS]
for s in (0, 1, 2):
    for v in VARIANTS:
        jobs.append(dict(name=f"{v}_s{s}", kind="var", seed=s, v=v, src=f"{SRC}/src_s{s}"))
for s in BASE_SEEDS:
    for v in VARIANTS:
        if v != "V0":
            jobs.append(dict(name=f"{v}_s{s}", kind="var", seed=s, v=v, src=f"{RUNS}/base_s{s}"))
EXTRA = os.environ.get("SCREEN_EXTRA", "").split()  # local test of the driver: tiny settings
GDEV = os.environ.get("GPU_DEV", "cuda")
env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
running, done_base, summary = {}, set(), open(f"{OUT}/summary.jsonl", "a")


def log(msg):
    line = f"[{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    with open(f"{OUT}/driver.log", "a") as f:
        f.write(line + "\n")


def launch(job, dev, pool):
    logf = open(f"{RUNS}/{job['name']}_{dev}.log", "w")
    if job["kind"] == "base":
        cmd = [
            sys.executable,
            "-m",
            "neuromorph.cli",
            "run",
            "robust-conversion",
            "--quick",
            "--seed",
            str(job["seed"]),
            "--device",
            dev,
            "--out",
            f"{RUNS}/base_s{job['seed']}",
            "--no-progress",
        ] + [a for e in EXTRA for a in ("--set", e)]
    else:
        cmd = [
            sys.executable,
            f"{HERE}/worker.py",
            job["src"],
            f"{RUNS}/{job['name']}_{dev}",
            dev,
            *VARIANTS[job["v"]],
            *EXTRA,
        ]
    p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    running[p.pid] = (p, job, dev, time.time(), pool)
    log(f"start {job['name']} on {dev}")


def finish(p, job, dev, t):
    wall = time.time() - t
    rec = dict(name=job["name"], device=dev, rc=p.returncode, wall=round(wall, 1))
    if job["kind"] == "base":
        try:
            r = json.load(open(f"{RUNS}/base_s{job['seed']}/results.json"))
            rec.update(
                {
                    m: {"clean": r[m]["clean"], "ensemble": r[m]["ensemble"]}
                    for m in (
                        "ann_robust",
                        "ann_plain",
                        "snn_converted_robust",
                        "snn_converted_plain",
                        "snn_finetuned",
                    )
                }
            )
            rec["gap"] = round(r["snn_finetuned"]["ensemble"] - r["ann_robust"]["ensemble"], 4)
            done_base.add(job["seed"])
        except Exception as e:
            rec["error"] = repr(e)
    else:
        txt = open(f"{RUNS}/{job['name']}_{dev}.log").read()
        res = [l for l in txt.splitlines() if l.startswith("RESULT ")]
        if res:
            rec.update(json.loads(res[-1][7:]))
        else:
            rec["tail"] = txt[-1500:]
    summary.write(json.dumps(rec) + "\n")
    summary.flush()
    log(f"done {job['name']} {dev} rc={p.returncode} wall={wall:.0f} gap={rec.get('gap')}")


def eligible(job, dev):
    if job["kind"] == "base":
        return dev == GDEV
    return job["seed"] in (0, 1, 2) or job["seed"] in done_base


while True:
    now = time.time() - T0
    for pid, (p, job, dev, t, _) in list(running.items()):
        if p.poll() is not None:
            del running[pid]
            finish(p, job, dev, t)
    if now > KILL:
        break
    for pool, dev, slots, stop in (("gpu", GDEV, GPU_SLOTS, STOP_GPU), ("cpu", "cpu", CPU_SLOTS, STOP_CPU)):
        while now < stop and sum(1 for v in running.values() if v[4] == pool) < slots:
            pick = next((j for j in jobs if eligible(j, dev)), None)
            if pick is None:
                break
            jobs.remove(pick)
            launch(pick, dev, pool)
    if not running and (not jobs or now > STOP_GPU):
        break
    time.sleep(2)
for p, job, dev, t, _ in running.values():
    p.kill()
    log(f"killed {job['name']} on {dev} after {time.time() - t:.0f}s")
with tarfile.open(f"{OUT}/logs.tar.gz", "w:gz") as tf:
    for n in os.listdir(RUNS):
        path = f"{RUNS}/{n}"
        if n.endswith(".log"):
            tf.add(path, arcname=n)
        elif os.path.exists(f"{path}/results.json"):
            tf.add(f"{path}/results.json", arcname=f"{n}_results.json")
log("end")
