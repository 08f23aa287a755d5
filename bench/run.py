"""Speed benchmarks of qonstraint's training path, measured side by side in one run.

    python bench/run.py          # a few minutes on 2 CPU cores
    python bench/run.py --full   # larger batches and more repeats

Writes bench/results/run-<machine>[-full]-<date>.json (--out to choose; bench/report.py renders it into bench/RESULTS.md).
Prints a table, the machine it ran on, and as its last line one JSON object of the headline numbers:
aug_per_sample_img_s, aug_batched_img_s, aug_speedup, loop_overhead (the median ratio of 60 alternated single steps),
epoch_loader_s, epoch_batched_s, epoch_bare_s, data_path_speedup (torch's default threads, as `fit` runs), host_syncs_per_step, compile_speedup
(null with compile_error when torch.compile cannot run), ddp_grad_max_rel_diff, mem_est_5_9_b256_gb, and
the projection of a TinyImageNet epoch on Kaggle's GPUs (a projection from the model's MACs, not a measurement).
"""
from __future__ import annotations
import argparse, json, os, statistics, time, warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from qonstraint.augment import train_transform
from qonstraint.collate import MixCollate
from qonstraint.controller import ConfidenceController, ControllerConfig, mix_prob_at
from qonstraint.core import amp_policy, seed_worker
from qonstraint.data import load_dataset
from qonstraint.device_augment import DeviceAugment, DeviceMix, device_batches
from qonstraint.model import Qonstraint
from qonstraint.recipe import PAPER
from qonstraint.budget import count_macs, estimate_memory
from qonstraint.baselines import network_config
from qonstraint.step import build_trainer, compile_forward, compile_unavailable, ddp_grad_check
from qonstraint.testing import count_host_syncs

from machine import machine, write_result           # bench/machine.py

TRAIN_IMAGES, VAL_IMAGES = PAPER.train_images, PAPER.val_images   # TinyImageNet with the paper's 80/20 split
GPUS = {  # peak dense throughput, TFLOP/s (vendor data sheets)
    "P100 (fp32; no tensor cores)": (9.3, 1),
    "T4 x2 (fp16 tensor cores)": (65.0, 2),
}
PAPER_P100_EPOCH_S = 333                           # the paper's measured epoch time of 5.9 on a P100 (IV.A.5)


def median_time(fn, repeat:int, warmup:int=2) -> float:
    "Median wall-clock seconds of `fn()` over `repeat` calls, after `warmup` calls."
    for _ in range(warmup): fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_augmentation(batch:int, repeat:int) -> dict:
    "MID phase 2 with CutMix/MixUp: torchvision per sample in a loop vs the batched path, one CPU thread each, images/s."
    d = load_dataset("digits")
    images, labels = d.train.images[:batch], torch.from_numpy(d.train.labels[:batch])
    p = mix_prob_at(ControllerConfig(), 2, 0.5)           # phase 2's mixing probability at confidence 0.5
    tfm, mix = train_transform("mid", 2, d.mean, d.std), MixCollate(d.num_classes, p=p)
    aug, dmix = DeviceAugment("mid", 2, d.mean, d.std), DeviceMix(d.num_classes, p=p)
    uint8 = torch.from_numpy(images)
    per_sample = median_time(lambda: mix.mix(torch.stack([tfm(im) for im in images]), labels), repeat)
    batched = median_time(lambda: dmix.mix(aug(uint8), labels), repeat)
    return dict(aug_per_sample_img_s=batch/per_sample, aug_batched_img_s=batch/batched, aug_speedup=per_sample/batched)


def tiny_trainer(compile:bool=False):
    "The `Trainer` that `fit` builds for the tiny preset (aggressive stem) on digits, on the CPU, with the paper's AdamW settings."
    torch.manual_seed(0)
    cpu, model = torch.device("cpu"), Qonstraint(network_config("tiny", 10, stem="aggressive"))
    t = build_trainer(model, cpu, amp_policy(cpu), lr=PAPER.lr, betas=PAPER.betas, weight_decay=PAPER.weight_decay,
                      grad_clip=PAPER.grad_clip, warmup_steps=0, ema_decay=ConfidenceController(PAPER.epochs).state.ema_decay)
    if compile: t.forward, _ = compile_forward(t.forward, cpu)
    return t


def bench_loop(batch:int, repeat:int) -> dict:
    """`fit`'s training step (all branches, hardness-weighted loss, scaler, clipping, EMA, metrics) against a bare
    forward/cross-entropy/backward/AdamW loop on the same model and batch; and the host reads in one step."""
    trainer, s = tiny_trainer(), ConfidenceController(PAPER.epochs).state
    trainer.apply(s)
    trainer.forward.train()
    x, y = torch.randn(batch, 3, 64, 64), torch.randint(0, 10, (batch,))
    target = F.one_hot(y, 10).float()
    model = trainer.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)   # the same AdamW kernel as fit's: the ratio is the loop's own cost
    def bare():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    fit_step = lambda: trainer.train_step(x, target, s)
    for f in (fit_step, bare, fit_step, bare): f()                # warm-up
    pairs = [(median_time(fit_step, 1, 0), median_time(bare, 1, 0)) for _ in range(repeat)]   # single steps, alternated:
    t_fit, t_bare = (statistics.median(p[i] for p in pairs) for i in (0, 1))                 # a change in the machine's
    overhead = statistics.median(f/b for f, b in pairs)    # load hits both sides of a pair; the median of the pairs' ratios
    t_update, t_opt = median_time(trainer.update, 9), median_time(trainer.opt.step, 9)   # the step's fixed part: scaler, clipping, EMA
    with count_host_syncs() as step_reads: trainer.train_step(x, target, s)
    d = load_dataset("digits")                      # fit's data_on_device path: the uint8 split on the device, batched there
    images, labels = torch.from_numpy(d.train.images), torch.from_numpy(d.train.labels)
    batches = device_batches(images, labels, torch.randperm(len(images)), batch, DeviceAugment("mid", s.aug_phase, d.mean, d.std),
                             DeviceMix(d.num_classes, p=s.mix_prob))
    with count_host_syncs() as device_reads: trainer.train_step(*next(batches), s)
    return dict(loop_overhead=overhead, fit_step_ms=1e3*t_fit, bare_step_ms=1e3*t_bare, update_ms=1e3*t_update, adamw_step_ms=1e3*t_opt,
                host_syncs_per_step=len(step_reads), host_syncs_device_batch_and_step=len(device_reads))


def bench_data_paths(batch:int, epochs:int, threads:int) -> dict:
    """Seconds per training epoch on digits (tiny, aggressive stem, MID phase 2 with mixing) through `fit`'s two data
    paths: DataLoader workers augmenting per sample (`data_on_device=False`, 2 workers, `fit`'s default before
    `"auto"`) and the batched path (`data_on_device=True`, what `"auto"` picks on the CPU); and a bare loop over the same
    network and images (no augmentation, plain cross-entropy, plain AdamW). The median epoch of each, run alternately,
    with torch's `threads` (its default: as `fit` runs) beside the DataLoader's workers."""
    torch.set_num_threads(threads)
    d, s = load_dataset("digits"), ConfidenceController(PAPER.epochs).state
    p = mix_prob_at(ControllerConfig(), 2, 0.5)
    images, labels = torch.from_numpy(d.train.images), torch.from_numpy(d.train.labels)
    trainer = tiny_trainer()
    trainer.apply(s)
    def loader_epoch(seed):
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(d.train.dataset(train_transform("mid", 2, d.mean, d.std)), batch_size=batch, shuffle=True, generator=g,
                            num_workers=2, worker_init_fn=seed_worker, collate_fn=MixCollate(d.num_classes, p=p))
        trainer.train_epoch(loader, s)
    def batched_epoch(seed):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        trainer.train_epoch(device_batches(images, labels, order, batch, DeviceAugment("mid", 2, d.mean, d.std), DeviceMix(d.num_classes, p=p)), s)
    model = trainer.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    mean, std = torch.tensor(d.mean).view(1, 3, 1, 1), torch.tensor(d.std).view(1, 3, 1, 1)
    def bare_epoch(seed):
        model.train()
        for idx in torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).split(batch):
            x = (images[idx].permute(0, 3, 1, 2).float()/255 - mean)/std
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    times = {k: [] for k in ("loader", "batched", "bare")}
    for e in range(epochs + 1):                                       # the first round warms up, untimed
        for k, f in (("loader", loader_epoch), ("batched", batched_epoch), ("bare", bare_epoch)):
            t = time.perf_counter(); f(e); dt = time.perf_counter() - t
            if e: times[k].append(dt)
    loader, batched, bare = (statistics.median(times[k]) for k in ("loader", "batched", "bare"))
    torch.set_num_threads(1)
    return dict(epoch_loader_s=loader, epoch_batched_s=batched, epoch_bare_s=bare, data_path_speedup=loader/batched,
                epoch_images=len(images), epoch_torch_threads=threads)


def bench_compile(batch:int, repeat:int) -> dict:
    "CPU step time, eager / compiled (`compile=True`), after compilation."
    if (why := compile_unavailable(torch.device("cpu"))) is not None: return dict(compile_speedup=None, compile_error=why)
    x, target = torch.randn(batch, 3, 64, 64), F.one_hot(torch.randint(0, 10, (batch,)), 10).float()
    times = {}
    try:
        for compiled in (False, True):
            trainer, s = tiny_trainer(compile=compiled), ConfidenceController(PAPER.epochs).state
            trainer.forward.train()
            t = time.perf_counter(); trainer.train_step(x, target, s); first = time.perf_counter() - t
            times[compiled] = median_time(lambda: trainer.train_step(x, target, s), repeat)
        return dict(compile_speedup=times[False]/times[True], compile_first_step_s=first)
    except Exception as e:   # a compiler failure is a result to report, not a crash of the whole benchmark
        return dict(compile_speedup=None, compile_error=f"{type(e).__name__}: {str(e)[:200]}")


def projection() -> dict:
    "Epoch time of Qonstraint 5.9 on TinyImageNet from its MACs: a projection at stated utilisations, not a measurement."
    macs = count_macs("qonstraint_5_9")
    flops = TRAIN_IMAGES*6*macs + VAL_IMAGES*2*macs    # training ≈ 3 × (2 FLOPs per MAC) forward; validation forward only
    implied = flops/PAPER_P100_EPOCH_S/(GPUS["P100 (fp32; no tensor cores)"][0]*1e12)
    rows = {f"{gpu} at {u:.0%} of peak": flops/(peak*1e12*u*n) for gpu, (peak, n) in GPUS.items() for u in (0.1, 0.25, 0.5)}
    return dict(macs_5_9=macs, epoch_tflop=flops/1e12, paper_p100_utilisation=implied, projected_epoch_s=rows)


def summary_rows(r:dict) -> list[tuple[str, str, str]]:
    "The table of a result: (benchmark, result, what it is), the projection rows last; bench/report.py renders it too."
    rows = [("augmentation, per sample (torchvision loop)", f"{r['aug_per_sample_img_s']:.0f} img/s", "MID phase 2 + CutMix/MixUp, batch 256, 1 thread"),
            ("augmentation, batched (data_on_device path)", f"{r['aug_batched_img_s']:.0f} img/s", f"speed-up {r['aug_speedup']:.2f}x (target >= 2)"),
            ("fit step / bare loop, batch 64", f"{r['loop_overhead']:.3f}", f"{r['fit_step_ms']:.1f} vs {r['bare_step_ms']:.1f} ms, tiny (target <= 1.05)"),
            ("fit step / bare loop, batch 32", f"{r['loop_overhead_b32']:.3f}", "the same fixed cost per step over half the work"),
            ("epoch on digits, DataLoader workers per sample", f"{r['epoch_loader_s']:.2f} s",
             f"{r['epoch_images']} images, MID phase 2 + mixing, tiny, batch 64, 2 workers (data_on_device=False), {r['epoch_torch_threads']} torch threads"),
            ("epoch on digits, batched path (the default)", f"{r['epoch_batched_s']:.2f} s",
             f"speed-up {r['data_path_speedup']:.2f}x: data_on_device='auto' picks it on the CPU"),
            ("epoch on digits, bare loop (no augmentation)", f"{r['epoch_bare_s']:.2f} s",
             f"the batched path costs {r['epoch_batched_s']/r['epoch_bare_s']:.2f}x a loop without augmentation, mixing or EMA"),
            ("fit's update: clip + AdamW (skips non-finite) + EMA", f"{r['update_ms']:.1f} ms", f"AdamW alone {r['adamw_step_ms']:.1f} ms; per step, whatever the batch"),
            ("host reads in one step", str(r["host_syncs_per_step"]), f"{r['host_syncs_device_batch_and_step']} with the on-device batch (target <= 1)"),
            ("compile speed-up (CPU)", "n/a" if r["compile_speedup"] is None else f"{r['compile_speedup']:.2f}x",
             r.get("compile_error") or f"first step {r['compile_first_step_s']:.0f} s (compiling)"),
            ("DDP vs 1 process, gradients", f"{r['ddp_grad_max_rel_diff']:.1e}", "max relative difference, 2 Gloo processes (target <= 1e-5)"),
            ("memory estimate, 5.9 at batch 256", f"{r['mem_est_5_9_b256_gb']:.2f} GiB", f"{r['mem_est_5_9_b256_checkpointed_gb']:.2f} GiB with checkpoint_stages")]
    rows += [(f"PROJECTION: epoch on {k}", f"{v:.0f} s", "from MACs, not measured") for k, v in r["projected_epoch_s"].items()]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="larger batches and more repeats")
    p.add_argument("--out", type=Path, help="the JSON result file (default bench/results/run-<machine>[-full]-<date>.json)")
    args = p.parse_args()
    full = args.full
    threads = torch.get_num_threads()   # torch's default here, as `fit` runs
    torch.set_num_threads(1)            # one CPU thread for every side of every other ratio
    warnings.filterwarnings("ignore")
    r, t0, load0 = {}, time.time(), os.getloadavg()[0]   # the load average: how busy the machine was
    r |= bench_augmentation(256, 7 if full else 3)
    r |= bench_loop(64, 100 if full else 60)
    r["loop_overhead_b32"] = bench_loop(32, 100 if full else 60)["loop_overhead"]
    r |= bench_data_paths(64, 5 if full else 3, threads)
    r |= bench_compile(64 if full else 32, 10 if full else 5)
    r["ddp_grad_max_rel_diff"] = ddp_grad_check(world=2)
    r["mem_est_5_9_b256_gb"] = estimate_memory("qonstraint_5_9", 256).total/2**30
    r["mem_est_5_9_b256_checkpointed_gb"] = estimate_memory("qonstraint_5_9", 256, checkpoint_stages=True).total/2**30
    r |= projection()
    r["machine"] = machine() | dict(load_avg_start=round(load0, 2), load_avg_end=round(os.getloadavg()[0], 2))
    r["seconds"] = round(time.time() - t0, 1)

    rows = summary_rows(r)
    w = max(len(a) for a, _, _ in rows)
    print(f"machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, GPU {r['machine']['gpu']}, "
          f"Python {r['machine']['python']}, torch {r['machine']['torch']}; {r['seconds']} s; load average "
          f"{r['machine']['load_avg_start']} at the start, {r['machine']['load_avg_end']} at the end")
    print(f"5.9: {r['macs_5_9']/1e9:.2f} GMAC per image; an epoch is {r['epoch_tflop']:.0f} TFLOP; the paper's 333 s on a P100 "
          f"is {r['paper_p100_utilisation']:.0%} of its fp32 peak")
    for a, b, c in rows: print(f"{a:<{w}}  {b:>12}  {c}")
    print(f"wrote {write_result('run', r | dict(full=full), args.out, 'full' if full else None)}")
    print(json.dumps(r))


if __name__ == "__main__": main()
