"""Training and evaluation throughput of Qonstraint on a CUDA GPU, option by option, on synthetic TinyImageNet-shaped data.

    python bench/gpu.py                   # on a CUDA machine: under 8 minutes (a 450 s budget, --budget-s, then the rest is skipped)
    python bench/gpu.py                   # without a GPU: the CPU-sized version (tiny preset, a few steps), well under a minute
    python bench/gpu.py --cpu --strict --budget-s 600 --out /tmp/gpu.json   # as tools/test.sh runs it: CPU-sized on any
                                          # machine, every option that can run runs, exit status 1 if one that ran failed

The data are made on the device, nothing is downloaded: 80,000 uint8 images of 64 × 64 × 3 and labels of 200 classes (on the
CPU: 256). Every option builds a fresh network and `qonstraint.step.build_trainer`'s step (AdamW, GradScaler, clipping, EMA:
the training's), and `qonstraint.step.time_steps` times it: `warmup` steps, which absorb the start-up (compilation, the
DataLoader's workers and the batches they prefetch: workers × 2 more warm-up steps), then a window of `steps` steps with the
device synchronised only at its two edges. The options on a GPU, Qonstraint 5.9 at batch 256:
  base          eager, fp16 + GradScaler, channels_last, data_on_device (augmented and mixed on the GPU)
  one change    bf16; channels_last off; the CPU DataLoader (a worker per core); checkpoint_stages; compile
  eval          the network's forward, eval mode, no_grad, autocast, batch 512 (the loss and accuracy sums not included)
  stochastic    a few steps with every random part on (DropPath, mixing with p = 1, RandAugment and erasing: HIGH phase 2),
                on both data paths: proof that the paths run
  DDP           one process per GPU (NCCL), each at batch 256/world, when the machine has more than one GPU
  presets       the paper's other presets at their batch sizes, with the base option
The training options use the main recipe's costlier half, augmentation MID phase 2 (RandAugment, mixing p = 0.5, DropPath 0.1).
Without a GPU the same functions run the tiny preset at batch 32, 1 + 3 steps, on one thread: fp32 as the base, bf16 autocast,
channels_last on, the DataLoader with 0 and 2 workers, checkpoint_stages, eval and the stochastic parts; compile only with
--compile; DDP only with --ddp-cpu N (N Gloo processes: a check that its code runs).

Prints a table (option, images/s, peak MiB, estimated MiB, TFLOP/s, % of the card's peak, or the error), the machine, the
projected time of a TinyImageNet epoch (80,000 train + 20,000 val images) and of 70 epochs at the fastest 5.9 option, and as
its last line a JSON object of those headline numbers; writes everything to one JSON file (--out; by default
bench/results/<gpu>-<date>.json, cpu-<date>.json without a GPU). An option that fails is recorded with its error and the
others go on; an option the time budget leaves no time for is recorded as skipped, never left out.

FLOPs: training 6 × MACs per image (a forward is 2 FLOPs per MAC, its backward twice the forward), evaluation 2 × MACs, with
the MACs of `qonstraint.budget.count_macs` (one forward); checkpoint_stages' recomputation is not counted. Peak memory:
`torch.cuda.max_memory_allocated` during the option less what was allocated before it (the synthetic data), beside
`estimate_memory(cfg, batch, amp, swa=False, checkpoint_stages)`.total (these steps keep an EMA copy but no SWA copy).
"""
from __future__ import annotations
import argparse, dataclasses, datetime, gc, json, math, os, re, socket, tempfile, time, warnings
from functools import cache
from pathlib import Path

T0 = time.perf_counter()                           # the time budget counts from here, imports included

import torch
from torch.utils.data import DataLoader

from qonstraint.augment import TINYIMAGENET_MEAN, TINYIMAGENET_STD, train_transform
from qonstraint.collate import MixCollate
from qonstraint.controller import ConfidenceController, ControlState, drop_path_at, mix_prob_at
from qonstraint.core import QonstraintError, amp_policy, get_device, loader_seeding, seed_everything
from qonstraint.data import Split, usable_cores
from qonstraint.device_augment import DeviceAugment, DeviceMix, device_batches
from qonstraint.distributed import wrap_ddp
from qonstraint.model import PRESETS, Qonstraint
from qonstraint.budget import count_macs, estimate_memory
from qonstraint.baselines import network_config
from qonstraint.step import build_trainer, compile_forward, compile_unavailable, time_steps
from qonstraint.studies import load_paper

from machine import machine                         # bench/machine.py

TRAIN_IMAGES, VAL_IMAGES, EPOCHS = 80_000, 20_000, 70   # TinyImageNet with the paper's 80/20 split of the official train set
NUM_CLASSES, IMAGE = 200, 64
PREFETCH = 2                                             # the DataLoader's prefetch_factor (its default)
RESULTS = Path(__file__).resolve().parent/"results"

# Peak dense throughput (no sparsity) in TFLOP/s by autocast dtype, from the vendors' data sheets: fp16/bf16 tensor cores,
# and for the P100, which has none, its fp16 rate. A card's name is matched by the first pattern that finds it.
PEAK_TFLOPS = [
    (r"H200 NVL", dict(fp16=835, bf16=835), "NVIDIA H200 NVL data sheet: FP16/BF16 Tensor Core 1,671 TFLOPS with sparsity; dense half"),
    (r"H200", dict(fp16=989, bf16=989), "NVIDIA H200 SXM data sheet: FP16/BF16 Tensor Core 1,979 TFLOPS with sparsity; dense half"),
    (r"H100 NVL", dict(fp16=835, bf16=835), "NVIDIA H100 NVL data sheet: FP16/BF16 Tensor Core 1,671 TFLOPS with sparsity; dense half"),
    (r"H100 PCIe", dict(fp16=756, bf16=756), "NVIDIA H100 PCIe data sheet: FP16/BF16 Tensor Core 1,513 TFLOPS with sparsity; dense half"),
    (r"H100", dict(fp16=989, bf16=989), "NVIDIA H100 SXM data sheet: FP16/BF16 Tensor Core 1,979 TFLOPS with sparsity; dense half"),
    (r"A100", dict(fp16=312, bf16=312), "NVIDIA A100 data sheet: FP16/BF16 Tensor Core 312 TFLOPS dense (624 with sparsity)"),
    (r"\bL4\b", dict(fp16=121, bf16=121), "NVIDIA L4 data sheet: FP16/BF16 Tensor Core 242 TFLOPS with sparsity; dense half"),
    (r"\bT4\b", dict(fp16=65), "NVIDIA T4 data sheet: 65 TFLOPS FP16 mixed precision (tensor cores); no bf16"),
    (r"P100.*SXM", dict(fp16=21.2), "NVIDIA Tesla P100 SXM2 data sheet: 21.2 TFLOPS FP16 (no tensor cores); no bf16"),
    (r"P100", dict(fp16=18.7), "NVIDIA Tesla P100 PCIe data sheet: 18.7 TFLOPS FP16 (no tensor cores); no bf16"),
]


@dataclasses.dataclass(frozen=True)
class Sizes:
    "How big a run is: the GPU's or the CPU's."
    preset:str            # the preset of the options
    batch:int             # its training batch
    eval_batch:int        # and evaluation batch
    images:int            # synthetic images on the device
    loader_images:int     # of them, copied to the host for the DataLoader (a slice: the loader draws from it)
    warmup:int            # steps before the timed window (the DataLoader's get workers × PREFETCH more)
    steps:int             # steps in the timed window
    amp:str               # the base option's autocast
    channels_last:bool    # the base option's layout
    loader_workers:tuple  # DataLoader options: worker counts
    budget_s:float        # default time budget from the start, seconds
    min_s:dict            # time an option needs left in the budget to be started, by kind

GPU = Sizes("qonstraint_5_9", 256, 512, TRAIN_IMAGES, 20_000, warmup=5, steps=30, amp="fp16", channels_last=True,
            loader_workers=(usable_cores(),), budget_s=450,
            min_s=dict(train=20, loader=40, compile=150, eval=10, stochastic=20, ddp=60))
CPU = Sizes("tiny", 32, 64, 256, 256, warmup=1, steps=3, amp="off", channels_last=False, loader_workers=(0, min(2, os.cpu_count())),
            budget_s=60, min_s=dict(train=2, loader=3, compile=60, eval=1, stochastic=2, ddp=10))


def card_peak(name:str) -> dict|None:
    "The peak TFLOP/s of the card `name` by dtype, and their source; None for a card not in `PEAK_TFLOPS`."
    return next((dict(pattern=p, tflops=t, source=s) for p, t, s in PEAK_TFLOPS if re.search(p, name)), None)


def paper_batches() -> dict:
    "{preset: (batch, source)}: the depth study's presets at the batches the paper states (IV.C.2), the others at 5.9's 256."
    out = {p: (256, "5.9's batch (IV.B.1; TrainConfig's default): the paper states none for this preset") for p in PRESETS if p != "tiny"}
    out["qonstraint_5_9"] = (256, "the paper, IV.B.1: the soft stem at batch 256")
    try: a = load_paper().ablations
    except QonstraintError as e: return out | {"note": str(e)}
    rows = a[(a.ablation == "depth") & (a.metric == "memory_gb") & a.batch_size.notna()]
    out |= {v: (int(b), f"the paper, {s}: {q!r}") for v, b, s, q in zip(rows.variant, rows.batch_size, rows.section, rows.quote) if v in out}
    return out


@cache
def macs(preset:str) -> int: return count_macs(network_config(preset, NUM_CLASSES))

@cache
def estimate_mib(preset:str, batch:int, amp:bool, checkpoint:bool) -> float:
    "`estimate_memory`'s total for one training step with an EMA copy and no SWA copy, MiB."
    return estimate_memory(network_config(preset, NUM_CLASSES), batch, amp=amp, swa=False, checkpoint_stages=checkpoint).total/2**20


def synthetic_data(n:int, device:torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    "n uint8 images N, 64, 64, 3 and n labels of 200 classes, made on `device`."
    g = torch.Generator(device).manual_seed(0)
    return (torch.randint(0, 256, (n, IMAGE, IMAGE, 3), dtype=torch.uint8, device=device, generator=g),
            torch.randint(0, NUM_CLASSES, (n,), device=device, generator=g))


def control_state(stochastic:bool) -> ControlState:
    "The controller's epoch-1 state in augmentation phase 2 at confidence 0.5; `stochastic`: DropPath at its highest, mixing p = 1."
    ctrl = ConfidenceController(EPOCHS)
    conf = 1.0 if stochastic else 0.5
    return dataclasses.replace(ctrl.state, aug_phase=2, drop_path=drop_path_at(ctrl.cfg, 2, conf),
                               mix_prob=1.0 if stochastic else mix_prob_at(ctrl.cfg, 2, conf))


def make_trainer(opt:dict, device:torch.device, ddp:bool=False):
    "A fresh network of the option's preset and the `Trainer` of its step, set up as the option says, in training mode."
    seed_everything(0)                                         # as the training does (cuDNN deterministic, no benchmark mode)
    model = Qonstraint(network_config(opt["preset"], NUM_CLASSES))
    model.set_grad_checkpointing(opt["checkpoint"])
    s = control_state(opt["kind"] == "stochastic")
    t = build_trainer(model, device, amp_policy(device, opt["amp"]), lr=s.lr, betas=(0.92, 0.999), weight_decay=5e-5,
                      grad_clip=1.0, warmup_steps=0, ema_decay=s.ema_decay, channels_last=opt["channels_last"])
    if ddp: t.forward = wrap_ddp(t.forward, device)
    if opt["compile"]:
        t.forward, compiled = compile_forward(t.forward, device)
        if not compiled: raise QonstraintError(f"torch.compile cannot run here: {compile_unavailable(device)}")
    t.apply(s)
    t.forward.train()
    return t, s


def device_stream(images:torch.Tensor, labels:torch.Tensor, batch:int, augment:DeviceAugment, mixer:DeviceMix):
    "The data_on_device path without end: `device_batches` over one shuffle after another, full batches only."
    n = len(images) - len(images) % batch
    while True:
        yield from device_batches(images, labels, torch.randperm(len(images), device=images.device)[:n], batch, augment, mixer)


def train_batches(opt:dict, s:ControlState, data:dict, device:torch.device, count:int):
    "`count` training batches of the option's data path: augmented and mixed on the device, or by a DataLoader's workers."
    if opt["data"] == "device":
        return device_stream(data["images"], data["labels"], opt["batch"], DeviceAugment(opt["aug"], s.aug_phase, TINYIMAGENET_MEAN, TINYIMAGENET_STD),
                             DeviceMix(NUM_CLASSES, p=s.mix_prob))
    split = data["host"]
    order = torch.randint(len(split), (count*opt["batch"],), generator=torch.Generator().manual_seed(0)).tolist()
    return DataLoader(split.dataset(train_transform(opt["aug"], s.aug_phase, TINYIMAGENET_MEAN, TINYIMAGENET_STD)), batch_size=opt["batch"],
                      sampler=order, num_workers=opt["workers"], collate_fn=MixCollate(NUM_CLASSES, p=s.mix_prob),
                      pin_memory=device.type == "cuda", **loader_seeding(0))


def train_seconds(opt:dict, data:dict, device:torch.device, ddp:bool=False) -> float:
    "Seconds per training step of the option, timed by `time_steps`; the loss of its last step must be finite."
    trainer, s = make_trainer(opt, device, ddp)
    batches = train_batches(opt, s, data, device, opt["warmup"] + opt["steps"])
    last = []
    def step(batch): last[:] = [trainer.train_step(*batch, s)]   # no host read in the window
    seconds = time_steps(step, batches, opt["steps"], device, opt["warmup"])
    loss, _, _, nonfinite, _ = last[0].tolist()                  # after the window: loss·B, top-1, top-5 hits, non-finite flag, distillation·B
    if nonfinite or not math.isfinite(loss): raise FloatingPointError(f"the last step's loss is not finite ({loss})")
    return seconds


def eval_seconds(opt:dict, data:dict, device:torch.device) -> float:
    "Seconds per evaluation batch: the network's forward in eval mode under no_grad and autocast, on normalised device batches."
    seed_everything(0)
    layout = torch.channels_last if opt["channels_last"] else torch.contiguous_format
    model = Qonstraint(network_config(opt["preset"], NUM_CLASSES)).to(device, memory_format=layout).eval()
    amp, images, B = amp_policy(device, opt["amp"]), data["images"], opt["batch"]
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (TINYIMAGENET_MEAN, TINYIMAGENET_STD))
    def batches():   # the val transform's work on the device: 64 × 64 already, so only scaling and normalising
        while True:
            for i in range(0, len(images) - B + 1, B):
                yield ((images[i:i + B].permute(0, 3, 1, 2).float()/255 - mean)/std).contiguous(memory_format=layout)
    @torch.no_grad()
    def step(x):
        with amp.autocast(device.type): model(x)
    return time_steps(step, batches(), opt["steps"], device, opt["warmup"])


def memory_window(device:torch.device):
    "Start an option's memory count; returns a function giving (peak MiB, peak MiB above what was allocated at the start)."
    if device.type != "cuda": return lambda: (None, None)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    def read():
        peak = torch.cuda.max_memory_allocated(device)
        return peak/2**20, (peak - before)/2**20
    return read


def throughput(opt:dict, images_per_s:float, flops_per_image:float, peak:dict|None, cards:int=1) -> dict:
    "TFLOP/s at `images_per_s`, and their fraction of `cards` cards' peak for the option's autocast dtype (None if unknown)."
    tflops = images_per_s*flops_per_image/1e12
    card = (peak or {}).get("tflops", {}).get(opt["amp"])
    return dict(images_per_s=images_per_s, tflops=tflops, peak_fraction=tflops/(card*cards) if card else None)


def measure_train(opt:dict, ctx:dict) -> dict:
    "A training option: images/s, memory beside the estimate, TFLOP/s and fraction of the card's peak."
    memory = memory_window(ctx["device"])
    seconds = train_seconds(opt, ctx["data"], ctx["device"])
    peak_mib, step_mib = memory()
    return dict(seconds_per_step=seconds, peak_mib=peak_mib, step_peak_mib=step_mib,
                estimate_mib=estimate_mib(opt["preset"], opt["batch"], opt["amp"] != "off", opt["checkpoint"])) \
        | throughput(opt, opt["batch"]/seconds, 6*macs(opt["preset"]), ctx["peak"])


def measure_eval(opt:dict, ctx:dict) -> dict:
    "The evaluation option: images/s, memory, TFLOP/s."
    memory = memory_window(ctx["device"])
    seconds = eval_seconds(opt, ctx["data"], ctx["device"])
    peak_mib, step_mib = memory()
    return dict(seconds_per_step=seconds, peak_mib=peak_mib, step_peak_mib=step_mib, estimate_mib=None) \
        | throughput(opt, opt["batch"]/seconds, 2*macs(opt["preset"]), ctx["peak"])


def measure_stochastic(opt:dict, ctx:dict) -> dict:
    "A few steps with every random part on: that they ran (a failure is an error), and what was on."
    r = measure_train(opt, ctx)
    s = control_state(True)
    return r | dict(ran=True, parts=dict(drop_path=s.drop_path, mix_prob=s.mix_prob, aug=f"{opt['aug']} phase {s.aug_phase}",
                                         randaugment=True, erase_p=DeviceAugment(opt["aug"], s.aug_phase).policy.erase_p))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank:int, world:int, port:int, opt:dict, folder:str):
    "One process of the DDP option: its GPU (NCCL; Gloo on the CPU), its share of the batch and of the data; rank 0 writes the slowest rank's numbers."
    cuda = opt["device_type"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda: torch.cuda.set_device(device)
    else: torch.set_num_threads(1)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        images, labels = synthetic_data(opt["images"]//world, device)
        memory = memory_window(device)
        seconds = train_seconds(dict(opt, batch=opt["batch"]//world), dict(images=images, labels=labels), device, ddp=True)
        t = torch.tensor([seconds, memory()[1] or 0.0], device=device)
        torch.distributed.all_reduce(t, torch.distributed.ReduceOp.MAX)
        if rank == 0: Path(folder, "ddp.json").write_text(json.dumps(dict(seconds_per_step=t[0].item(), step_peak_mib=t[1].item())))
    finally: torch.distributed.destroy_process_group()


def measure_ddp(opt:dict, ctx:dict) -> dict:
    "DDP over all the machine's GPUs: global images/s, and its scaling efficiency against `world` × the base option's."
    world = ctx["ddp_world"]
    with tempfile.TemporaryDirectory() as folder:
        procs = torch.multiprocessing.start_processes(_ddp_worker, args=(world, _free_port(), opt, folder), nprocs=world,
                                                      join=False, start_method="spawn")
        stop = max(ctx["deadline"], time.perf_counter() + ctx["sizes"].min_s["ddp"])
        while not procs.join(timeout=5):
            if time.perf_counter() > stop:
                for p in procs.processes: p.kill()
                raise TimeoutError(f"the {world} DDP processes ran past the time budget and were stopped")
        r = json.loads(Path(folder, "ddp.json").read_text())
    base = ctx["rows"].get("base", {}).get("images_per_s")
    out = dict(world=world, seconds_per_step=r["seconds_per_step"], peak_mib=None,
               step_peak_mib=r["step_peak_mib"] if ctx["device"].type == "cuda" else None,
               estimate_mib=estimate_mib(opt["preset"], opt["batch"]//world, opt["amp"] != "off", opt["checkpoint"])) \
        | throughput(opt, opt["batch"]/r["seconds_per_step"], 6*macs(opt["preset"]), ctx["peak"], world)
    return out | dict(scaling_efficiency=out["images_per_s"]/(world*base) if base else None,
                      scaling_note="global images/s / (world × the base option's images/s on one GPU at the full batch)")


MEASURE = dict(train=measure_train, eval=measure_eval, stochastic=measure_stochastic, ddp=measure_ddp)


def options(sizes:Sizes, device:torch.device, allow_compile:bool, ddp_world:int) -> list[dict]:
    "Every option, in the order they run (the costly and the optional last), with why it is skipped here if it is."
    cuda = device.type == "cuda"
    base = dict(kind="train", group="main", preset=sizes.preset, batch=sizes.batch, amp=sizes.amp, channels_last=sizes.channels_last,
                data="device", workers=0, checkpoint=False, compile=False, aug="mid", warmup=sizes.warmup, steps=sizes.steps)
    loader = lambda w: dict(data="loader", workers=w, warmup=sizes.warmup + w*PREFETCH, budget="loader")
    opts = [dict(base, name="base")]
    if cuda:
        opts.append(dict(base, name="bf16", amp="bf16"))
        opts.append(dict(base, name="channels_last off", channels_last=False))
    else:
        opts.append(dict(base, name="bf16 autocast", amp="bf16"))
        opts.append(dict(base, name="channels_last on", channels_last=True))
    opts += [dict(base, name=f"DataLoader, {w} workers", **loader(w)) for w in sizes.loader_workers]
    opts.append(dict(base, name="checkpoint_stages", checkpoint=True))
    opts.append(dict(base, name="eval", kind="eval", group="eval", batch=sizes.eval_batch))
    few = dict(kind="stochastic", group="stochastic", aug="high", warmup=1, steps=3)
    opts.append(dict(base, name="stochastic, data_on_device", **few))
    opts.append(dict(base, name="stochastic, DataLoader", **few | loader(sizes.loader_workers[-1]) | dict(warmup=1)))
    opts.append(dict(base, name="DDP" + (f", {ddp_world} {'GPUs' if cuda else 'Gloo processes'}" if ddp_world > 1 else ""), kind="ddp", group="main",
                     images=sizes.images, device_type=device.type))
    opts.append(dict(base, name="compile", compile=True, budget="compile"))
    batches = paper_batches()
    opts += [dict(base, name=f"{p} at batch {batches[p][0]}", group="presets", preset=p, batch=batches[p][0], batch_source=batches[p][1])
             for p in ("qonstraint_5_5", "qonstraint_5_6", "lighter", "heavier", "heaviest")]
    for o in opts:   # why an option cannot run here
        if o["amp"] == "bf16" and cuda and torch.cuda.get_device_capability(device) < (8, 0):
            o["skip"] = f"bf16: this GPU (sm_{''.join(map(str, torch.cuda.get_device_capability(device)))}) has no fast bfloat16"
        if o["compile"]:
            if not cuda and not allow_compile: o["skip"] = "compile takes minutes on a small CPU: pass --compile to measure it"
            elif (why := compile_unavailable(device)): o["skip"] = f"compile: {why}"
        if o["kind"] == "ddp" and ddp_world < 2:
            o["skip"] = f"DDP needs more than one GPU; this machine has {torch.cuda.device_count() if cuda else 0}"
        if o["group"] == "presets" and not cuda: o["skip"] = "CPU mode runs the tiny preset only"
    return opts


SETTINGS = ("kind", "group", "preset", "batch", "amp", "channels_last", "data", "workers", "checkpoint", "compile", "aug", "warmup", "steps")

def run_option(opt:dict, ctx:dict) -> dict:
    "One option's row: its measurements, or its error (`Type: message`), or why it was skipped; memory freed before and after."
    row = dict(name=opt["name"], **{k: opt[k] for k in SETTINGS}) | ({"batch_source": opt["batch_source"]} if "batch_source" in opt else {})
    if "skip" in opt: return row | dict(status="skipped", reason=opt["skip"])
    need, left = ctx["sizes"].min_s[opt.get("budget", opt["kind"])], ctx["deadline"] - time.perf_counter()
    if left < need: return row | dict(status="skipped", reason=f"time budget: {max(0, left):.0f} s left, the option needs about {need} s")
    free(ctx["device"], opt["compile"])
    start = time.perf_counter()
    try: row |= dict(status="ok") | MEASURE[opt["kind"]](opt, ctx)
    except Exception as e: row |= dict(status="error", error=f"{type(e).__name__}: {' '.join(str(e).split())}"[:400])
    free(ctx["device"], opt["compile"])
    return row | dict(wall_s=round(time.perf_counter() - start, 1))


def free(device:torch.device, compiled:bool=False):
    "Release what the last option left: Python garbage, compiled graphs, the CUDA cache; reset the peak memory count."
    if compiled: torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def projection(rows:list[dict]) -> dict|None:
    "An epoch (80,000 train + 20,000 val images) and 70 epochs at the fastest training option of the main preset."
    train = [r for r in rows if r["status"] == "ok" and r["group"] == "main" and r.get("images_per_s")]
    if not train: return None
    best = max(train, key=lambda r: r["images_per_s"])
    ev = next((r for r in rows if r["kind"] == "eval" and r["status"] == "ok"), None)
    epoch = TRAIN_IMAGES/best["images_per_s"] + (VAL_IMAGES/ev["images_per_s"] if ev else 0)
    return dict(option=best["name"], preset=best["preset"], train_images_per_s=best["images_per_s"],
                eval_images_per_s=ev and ev["images_per_s"], epoch_s=epoch, run_h=EPOCHS*epoch/3600, epochs=EPOCHS,
                note="train at the best option; validation at the eval option's rate (one device)" + ("" if ev else ": eval missing, train only"))


def print_report(r:dict):
    "The table, the machine, the projection."
    m, fmt = r["machine"], lambda v, f: "-" if v is None else format(v, f)
    print(f"machine: GPU {m['gpu']} x{m['gpu_count']}, driver {m['driver']}, CUDA {m['cuda']}, torch {m['torch']}, "
          f"Python {m['python']}, {m['cpu']}, {m['cores']} cores, {m['date']}")
    s = r["settings"]
    print(f"{s['mode']}: {s['preset']} at batch {s['batch']} (eval {s['eval_batch']}), {s['warmup_steps']} warm-up + {s['timed_steps']} timed steps; "
          f"{s['macs'][s['preset']]/1e9:.3f} GMAC per image; peak: {r['peak']['source'] if r['peak'] else 'card not in the table, TFLOP/s only'}")
    head = ("option", "img/s", "peak MiB", "est. MiB", "TFLOP/s", "% peak", "settings, or what happened")
    lines = []
    for x in r["results"]:
        data = f"loader/{x['workers']}w" if x["data"] == "loader" else x["data"]
        what = f"{x['preset']} b{x['batch']} {'compiled' if x['compile'] else 'eager'} {x['amp']} " \
               f"{'channels_last' if x['channels_last'] else 'NCHW'} {data}{' checkpointed' if x['checkpoint'] else ''}"
        if x["status"] == "ok" and x.get("scaling_efficiency") is not None: what += f"; scaling efficiency {x['scaling_efficiency']:.0%}"
        if x["status"] != "ok": what = f"{x['status'].upper()}: {x.get('error') or x.get('reason')}"
        lines.append((x["name"], fmt(x.get("images_per_s"), ".0f"), fmt(x.get("step_peak_mib"), ".0f"), fmt(x.get("estimate_mib"), ".0f"),
                      fmt(x.get("tflops"), ".3g"), fmt(x.get("peak_fraction") and 100*x["peak_fraction"], ".1f"), what))
    w = [max(len(l[i]) for l in lines + [head]) for i in range(6)]
    for l in [head] + lines: print("  ".join(c.ljust(w[i]) if i in (0,) else c.rjust(w[i]) for i, c in enumerate(l[:6])) + "  " + l[6])
    p = r["projection"]
    print("projection: none (no training option ran)" if p is None else
          f"projection: an epoch of {TRAIN_IMAGES:,} train + {VAL_IMAGES:,} val images: {p['epoch_s']:.0f} s; {EPOCHS} epochs: "
          f"{p['run_h']:.2f} h at the best option ({p['option']}, {p['preset']}, {p['train_images_per_s']:.0f} img/s)"
          + ("" if p["eval_images_per_s"] else "; the eval option did not run: training only"))
    print(f"{r['counts']['ok']} ran, {r['counts']['error']} failed, {r['counts']['skipped']} skipped, in {r['seconds']:.0f} s; wrote {r['out']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="the JSON result file (default bench/results/<gpu>-<date>.json)")
    p.add_argument("--budget-s", type=float, help=f"stop starting options this many seconds after the start (GPU {GPU.budget_s:.0f}, CPU {CPU.budget_s:.0f})")
    p.add_argument("--cpu", action="store_true", help="the CPU-sized version even on a GPU machine")
    p.add_argument("--compile", action="store_true", help="on the CPU, measure compile too (minutes)")
    p.add_argument("--ddp-cpu", type=int, default=0, metavar="N",
                   help="on the CPU, run the DDP option in N Gloo processes (a check that its code runs; slow)")
    p.add_argument("--strict", action="store_true", help="exit status 1 if an option that ran recorded an error")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    try: device = torch.device("cpu") if a.cpu else get_device("auto")
    except QonstraintError as e: raise SystemExit(f"bench/gpu.py: {e}")   # a GPU this PyTorch build cannot run: the fix, not a table
    if device.type == "mps": device = torch.device("cpu")
    sizes = GPU if device.type == "cuda" else CPU
    if device.type == "cpu": torch.set_num_threads(1)   # as bench/run.py: a check that the paths run, steady on a busy machine
    budget = a.budget_s if a.budget_s is not None else sizes.budget_s
    m = machine(device)
    peak = card_peak(m["gpu"]) if device.type == "cuda" else None
    images, labels = synthetic_data(sizes.images, device)
    host = Split(images[:sizes.loader_images].cpu().numpy(), labels[:sizes.loader_images].cpu().numpy(), [str(c) for c in range(NUM_CLASSES)])
    ddp_world = torch.cuda.device_count() if device.type == "cuda" else a.ddp_cpu
    ctx = dict(device=device, sizes=sizes, peak=peak, deadline=T0 + budget, rows={}, ddp_world=ddp_world,
               data=dict(images=images, labels=labels, host=host))
    del images, labels
    rows = []
    for opt in options(sizes, device, a.compile, ddp_world):
        ddp = opt["kind"] == "ddp" and "skip" not in opt
        if ddp: ctx["data"] = dict(host=host); free(device)             # the GPUs to the DDP processes, whole
        rows.append(run_option(opt, ctx))
        ctx["rows"][opt["name"]] = rows[-1]
        if ddp: ctx["data"] |= dict(zip(("images", "labels"), synthetic_data(sizes.images, device)))
    counts = {k: sum(r["status"] == k for r in rows) for k in ("ok", "error", "skipped")}
    out = a.out or RESULTS/f"{re.sub(r'[^a-z0-9]+', '-', m['gpu'].lower()).strip('-') if device.type == 'cuda' else 'cpu'}-{datetime.date.today()}.json"
    r = dict(benchmark="bench/gpu.py", mode="cuda" if device.type == "cuda" else "cpu", machine=m, peak=peak,
             settings=dict(mode="GPU" if device.type == "cuda" else "CPU", preset=sizes.preset, batch=sizes.batch, eval_batch=sizes.eval_batch,
                           synthetic_images=sizes.images, loader_images=sizes.loader_images,
                           loader_note="the DataLoader draws its batches from a host copy of the first loader_images synthetic images", warmup_steps=sizes.warmup, timed_steps=sizes.steps,
                           loader_warmup="warmup_steps + workers × prefetch_factor 2 (the workers' start-up and first batches)",
                           stochastic_steps="1 warm-up + 3 timed", budget_s=budget, epochs=EPOCHS,
                           train_flops_per_image="6 × count_macs (forward 2 FLOPs per MAC, backward 2 × forward)",
                           eval_flops_per_image="2 × count_macs", memory="CUDA: max_memory_allocated during the option less the "
                           "allocation before it (the synthetic data); the estimate: estimate_memory(swa=False).total; CPU: not measured",
                           macs={x["preset"]: macs(x["preset"]) for x in rows if x["status"] == "ok"} | {sizes.preset: macs(sizes.preset)}),
             results=rows, projection=projection(rows), counts=counts, seconds=round(time.perf_counter() - T0, 1), out=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print_report(r)
    best = r["projection"] or {}
    print(json.dumps(dict(mode=r["mode"], gpu=m["gpu"], best_option=best.get("option"), train_images_per_s=best.get("train_images_per_s"),
                          epoch_s=best.get("epoch_s"), run_h=best.get("run_h"), **counts, seconds=r["seconds"], out=str(out))))
    if a.strict and counts["error"]: raise SystemExit(1)


if __name__ == "__main__": main()
