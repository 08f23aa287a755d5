"""Training and evaluation throughput of Qonstraint on a CUDA GPU, option by option, on synthetic TinyImageNet-shaped data.

    python bench/gpu.py                   # on a CUDA machine: under 8 minutes (a 450 s time limit, --time-limit-s, then the rest is skipped)
    python bench/gpu.py                   # without a GPU: the CPU-sized version (tiny preset, a few steps), about a minute
    python bench/gpu.py --cpu --strict --time-limit-s 600 --out /tmp/gpu.json   # as tools/test.sh runs it: CPU-sized on any machine,
                                          # everything that can run runs, exit status 1 if an option that ran or a check failed

The data are made on the device, nothing is downloaded: 80,000 uint8 images of 64 × 64 × 3 and labels of 200 classes (on the
CPU: 256). Every option is a run's `TrainConfig` (the paper's recipe, `qonstraint.recipe.PAPER`) built by the library as a
training run builds it (`qonstraint.parts.build_run`: a fresh network, the trainer's step with AdamW, GradScaler, clipping,
EMA, and the run's own batches, `qonstraint.parts.train_stream`), and `qonstraint.step.time_steps` times it: `warmup` steps, which absorb the start-up (compilation, the
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
others go on; an option the time limit leaves no time for is recorded as skipped, never left out. Each option that started
records `need_s`, the time it was expected to need (the time limit's test), beside its `wall_s`.

Before the options, checks that only a run on the device can make, each a row {name, status: ok | failed | skipped |
reported, detail or error, numbers} under "checks" in the JSON, a few steps each of `build_trainer`'s step on one fixed batch
(GPU: 5.9 at batch 32; CPU: tiny at batch 8). They take seconds, and a first run on a GPU must report them even if the options
overrun the time limit:
  sync debug      a step (after a warm-up step) under torch.cuda.set_sync_debug_mode("error"), fp16 and bf16: failed, with the
                  call that synchronised, if anything in it waits for the GPU; skipped without CUDA
  inf, NaN        a hook sets a gradient to inf (fp16 + GradScaler) or NaN (bf16, the unscaled scaler; fused AdamW's found_inf):
                  every weight must be unchanged, the fp16 scale lowered, the unscaled one left at 1
  resume          a checkpoint's scaler from fp16 + scaling restored into a bf16 trainer by `qonstraint.train.restore_scaler`
                  (and bf16 into fp16): a warning, the fresh trainer's scale, the gradient norm of a fresh step's (not × 65,536)
  compile limit   the compile option's time-limit decision (made before it compiles, a compilation cannot be stopped): skipped with
                  "time limit…" when less time is left than `min_s["compile"]` + its steps at the base option's eager step time
  bitwise         two fresh trainers, the same seed and batch, 2 steps each: weights equal bit for bit, or by how much they
                  differ; again under seed_everything(0, deterministic=True) (or the op without a deterministic kernel).
                  Reported, never failed
On the CPU the same run but sync debug (fp16 autocast runs there with a GradScaler("cpu")). A failed check is an error for
--strict; a skipped or reported one is not.

FLOPs: training 6 × MACs per image (a forward is 2 FLOPs per MAC, its backward twice the forward), evaluation 2 × MACs, with
the MACs of `qonstraint.budget.count_macs` (one forward); checkpoint_stages' recomputation is not counted. Peak memory:
`torch.cuda.max_memory_allocated` during the option less what was allocated before it (the synthetic data), beside
`estimate_memory(cfg, batch, amp, swa=False, checkpoint_stages)`.total (these steps keep an EMA copy but no SWA copy).
"""
from __future__ import annotations
import argparse, dataclasses, datetime, gc, json, math, os, re, socket, tempfile, time, traceback, warnings
from functools import cache, partial
from pathlib import Path
from types import SimpleNamespace

T0 = time.perf_counter()                           # the time limit counts from here, imports included

import torch

from qonstraint.augment import TINYIMAGENET_MEAN, TINYIMAGENET_STD
from qonstraint.controller import ConfidenceController, ControlState, drop_path_at, mix_prob_at
from qonstraint.core import QonstraintError, amp_policy, deterministic_kernels_explained, get_device, seed_everything
from qonstraint.data import DataBundle, Split
from qonstraint.decode import usable_cores
from qonstraint.device_augment import DeviceAugment
from qonstraint.model import PRESETS, Qonstraint
from qonstraint.budget import count_macs, estimate_memory
from qonstraint.baselines import network_config
from qonstraint.config import TrainConfig
from qonstraint.parts import TrainingRun, build_run, train_stream
from qonstraint.recipe import PAPER
from qonstraint.step import compile_unavailable, time_steps
from qonstraint.studies import load_paper
from qonstraint.train import restore_scaler

from machine import machine                         # bench/machine.py

TRAIN_IMAGES, VAL_IMAGES, EPOCHS = PAPER.train_images, PAPER.val_images, PAPER.epochs   # TinyImageNet, the paper's 80/20 split
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
    warmup:int            # steps before the timed window (the DataLoader's get workers × PREFETCH more)
    steps:int             # steps in the timed window
    amp:str               # the base option's autocast
    channels_last:bool    # the base option's layout
    loader_workers:tuple  # DataLoader options: worker counts
    time_limit_s:float    # default time limit from the start, seconds
    min_s:dict            # time an option needs left in the time limit to be started, by kind (and the checks, "check")
    check_batch:int       # the checks' training batch

GPU = Sizes("qonstraint_5_9", 256, 512, TRAIN_IMAGES, warmup=5, steps=30, amp="fp16", channels_last=True,
            loader_workers=(usable_cores(),), time_limit_s=450,
            min_s=dict(train=20, loader=40, compile=150, eval=10, stochastic=20, ddp=60, check=10), check_batch=32)
CPU = Sizes("tiny", 32, 64, 256, warmup=1, steps=3, amp="off", channels_last=False, loader_workers=(0, min(2, os.cpu_count())),
            time_limit_s=60, min_s=dict(train=2, loader=3, compile=60, eval=1, stochastic=2, ddp=10, check=2), check_batch=8)


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


def stand_in_data(images:torch.Tensor, labels:torch.Tensor) -> DataBundle:
    "A host copy of synthetic images as a dataset bundle (`build_run` takes it instead of TinyImageNet; its splits are the same images)."
    split = Split(images.cpu().numpy(), labels.cpu().numpy(), [str(c) for c in range(NUM_CLASSES)])
    return DataBundle("tinyimagenet", split, split, split, split.classes, "bench/gpu.py: synthetic uint8 images")


def option_config(opt:dict, device:torch.device, deterministic:bool=False, world:int=1) -> TrainConfig:
    "The option as a run's `TrainConfig`: the library builds its network, trainer and batches from it, as for a real run."
    return TrainConfig(preset=opt["preset"], aug=opt["aug"], batch_size=opt["batch"]*world, amp=opt["amp"], compile=opt["compile"],
                       checkpoint_stages=opt["checkpoint"], data_on_device=opt["data"] == "device", num_workers=opt["workers"],
                       warmup_epochs=0, device=str(device), deterministic=deterministic, devices=world)


def option_run(opt:dict, device:torch.device, data:dict, deterministic:bool=False, world:int=1) -> tuple[TrainingRun, ControlState]:
    """`qonstraint.parts.build_run`'s parts of a run with the option's settings and layout, in training mode, and the control state
    its steps take (augmentation phase 2; `stochastic`: every random part at its highest). Its data on the device are the copy made
    before the option started (not counted in the option's memory)."""
    tr = build_run(option_config(opt, device, deterministic, world), data["bundle"], channels_last=opt["channels_last"])
    if opt["compile"] and not tr.compiled: raise QonstraintError(f"torch.compile cannot run here: {compile_unavailable(device)}")
    if "images" in data: tr.train_on_device = (data["images"], data["labels"])
    s = control_state(opt["kind"] == "stochastic")
    tr.trainer.apply(s)
    tr.trainer.forward.train()
    return tr, s


def train_seconds(opt:dict, data:dict, device:torch.device, world:int=1) -> float:
    "Seconds per training step of the option, timed by `time_steps` on the run's own batches; the loss of its last step must be finite."
    tr, s = option_run(opt, device, data, world=world)
    last = []
    def step(batch): last[:] = [tr.trainer.train_step(*batch, s)]   # no host read in the window
    seconds = time_steps(step, train_stream(tr, s), opt["steps"], device, opt["warmup"])
    loss, _, _, nonfinite, _ = last[0].tolist()                  # after the window: loss·B, top-1, top-5 hits, non-finite flag, distillation·B
    if nonfinite or not math.isfinite(loss): raise FloatingPointError(f"the last step's loss is not finite ({loss})")
    return seconds


def normaliser(device:torch.device):
    "The val transform's work on the device (64 × 64 already: only scaling and normalising): uint8 N, 64, 64, 3 -> float N, 3, 64, 64."
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (TINYIMAGENET_MEAN, TINYIMAGENET_STD))
    return lambda images: (images.permute(0, 3, 1, 2).float()/255 - mean)/std


def eval_seconds(opt:dict, data:dict, device:torch.device) -> float:
    "Seconds per evaluation batch: the network's forward in eval mode under no_grad and autocast, on normalised device batches."
    seed_everything(0)
    layout = torch.channels_last if opt["channels_last"] else torch.contiguous_format
    model = Qonstraint(network_config(opt["preset"], NUM_CLASSES)).to(device, memory_format=layout).eval()
    amp, images, B, normalise = amp_policy(device, opt["amp"]), data["images"], opt["batch"], normaliser(device)
    def batches():
        while True:
            for i in range(0, len(images) - B + 1, B): yield normalise(images[i:i + B]).contiguous(memory_format=layout)
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
    if not cuda: torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:   # as torchrun sets them: `build_run` joins the process group (NCCL, Gloo on the CPU) and shards the data by rank
        images, labels = synthetic_data(opt["images"], device)
        data = dict(images=images, labels=labels, bundle=stand_in_data(images, labels)) if opt["data"] == "device" else \
               dict(bundle=stand_in_data(images, labels))
        memory = memory_window(device)
        seconds = train_seconds(dict(opt, batch=opt["batch"]//world), data, device, world=world)
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
                raise TimeoutError(f"the {world} DDP processes ran past the time limit and were stopped")
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
    loader = lambda w: dict(data="loader", workers=w, warmup=sizes.warmup + w*PREFETCH, limit="loader")
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
    opts.append(dict(base, name="compile", compile=True, limit="compile"))
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

def option_need(opt:dict, ctx:dict) -> float:
    """Seconds an option needs left in the time limit to be started: its kind's `min_s`. Compile's is decided before it starts,
    since a compilation under way cannot be stopped: `min_s["compile"]` (the compilation of forward and backward with cold
    caches: 150 s on a GPU, an estimate) plus its warm-up and timed steps at the base option's measured eager step time."""
    need = ctx["sizes"].min_s[opt.get("limit", opt["kind"])]
    eager = ctx["rows"].get("base", {}).get("seconds_per_step")
    return need + (opt["warmup"] + opt["steps"])*eager if opt["compile"] and eager else need


def time_limit_skip(opt:dict, ctx:dict) -> str|None:
    "Why the time limit leaves no time for the option (the reason starts with 'time limit'), or None if it can start."
    need, left = option_need(opt, ctx), ctx["deadline"] - time.perf_counter()
    return f"time limit: {max(0, left):.0f} s left, the option needs about {need:.0f} s" if left < need else None


def error_text(e:BaseException) -> str: return f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]


def run_option(opt:dict, ctx:dict) -> dict:
    "One option's row: its measurements, or its error (`Type: message`), or why it was skipped; memory freed before and after."
    row = dict(name=opt["name"], **{k: opt[k] for k in SETTINGS}) | ({"batch_source": opt["batch_source"]} if "batch_source" in opt else {})
    if "skip" in opt: return row | dict(status="skipped", reason=opt["skip"])
    if why := time_limit_skip(opt, ctx): return row | dict(status="skipped", reason=why)
    row["need_s"] = round(option_need(opt, ctx), 1)   # beside its wall_s: how good the estimate was
    free(ctx["device"], opt["compile"])
    start = time.perf_counter()
    try: row |= dict(status="ok") | MEASURE[opt["kind"]](opt, ctx)
    except Exception as e: row |= dict(status="error", error=error_text(e))
    free(ctx["device"], opt["compile"])
    return row | dict(wall_s=round(time.perf_counter() - start, 1))


def free(device:torch.device, compiled:bool=False):
    "Release what the last option left: Python garbage, compiled graphs, the CUDA cache; reset the peak memory count."
    if compiled: torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# The checks: what only a run on the device shows, a few steps each on one fixed batch of `Sizes.check_batch` images. They run
# before the options: they take seconds, and a first run on a GPU must report them even if the options overrun the time limit.

def check_trainer(ctx:dict, amp:str, deterministic:bool=False):
    "A check's trainer (`option_run`'s) and control state: the run's preset and layout at the checks' batch, autocast `amp`, eager."
    opt = dict(kind="train", preset=ctx["sizes"].preset, batch=ctx["sizes"].check_batch, channels_last=ctx["sizes"].channels_last,
               amp=amp, checkpoint=False, compile=False, aug="mid", data="device", workers=0)
    tr, s = option_run(opt, ctx["device"], ctx["check_data"], deterministic)
    return tr.trainer, s


def amp_missing(device:torch.device, amp:str) -> str|None:
    "Why autocast `amp` cannot run on `device` (`amp_policy`'s refusal), or None."
    try: amp_policy(device, amp)
    except QonstraintError as e: return str(e)


def weights(t) -> list[torch.Tensor]: return [p.detach().clone() for p in t.params]


def innermost(e:BaseException, frames:int=3) -> str:
    "The last `frames` Python frames of `e`'s traceback, innermost last: the line that made the call."
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in reversed(traceback.extract_tb(e.__traceback__)[-frames:]))


def check_sync_debug(ctx:dict, amp:str) -> dict:
    "A step of `build_trainer`'s step, after a warm-up step, under `torch.cuda.set_sync_debug_mode('error')`: ok if nothing in it waits for the GPU."
    device = ctx["device"]
    if device.type != "cuda": return dict(status="skipped", detail="no CUDA")
    if why := amp_missing(device, amp): return dict(status="skipped", detail=why)
    t, s = check_trainer(ctx, amp)
    t.train_step(*ctx["batch"], s)                                   # the first step's lazy set-up (AdamW's state, the scale) apart
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try: t.train_step(*ctx["batch"], s)
    except RuntimeError as e: return dict(status="failed", error=error_text(e), detail=f"at {innermost(e)}")
    finally: torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(device)
    return dict(status="ok", detail=f"{t.amp.mode}: no synchronising call in a training step")


def check_nonfinite(ctx:dict, amp:str, value:float) -> dict:
    """After a normal step, a step whose gradient is not finite (a hook sets one parameter's to `value`): every weight must be
    unchanged, a loss-scaling scaler's scale lowered, an unscaled one's left as it was."""
    if why := amp_missing(ctx["device"], amp): return dict(status="skipped", detail=why)
    t, s = check_trainer(ctx, amp)
    t.train_step(*ctx["batch"], s)                                   # AdamW's state exists: the skipped step must not touch it either
    before, scale = weights(t), t.scaler.get_scale()
    hook = t.params[0].register_hook(lambda g: torch.full_like(g, value))
    try: t.train_step(*ctx["batch"], s)
    finally: hook.remove()
    after = t.scaler.get_scale()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, weights(t)))
    ok = not changed and (after < scale if t.amp.scaler else after == scale)
    return dict(status="ok" if ok else "failed",
                detail=f"{t.amp.mode}, fused AdamW {t.opt.defaults['fused']}, a gradient set to {value}: {changed} of {len(before)} weight "
                       f"tensors changed, scale {scale:g} -> {after:g}",
                numbers=dict(changed_tensors=changed, tensors=len(before), scale_before=scale, scale_after=after))


def restore_into(t, ck:dict) -> list[str]:
    "`qonstraint.train.restore_scaler` into trainer `t`, through a stand-in for the run's parts (it reads amp, trainer, env.main, dir); its warnings."
    parts = SimpleNamespace(amp=t.amp, trainer=t, env=SimpleNamespace(main=True), dir="(bench/gpu.py's check)")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        restore_scaler(parts, ck)
    return [str(w.message) for w in said]


def check_resume(ctx:dict, was:str, now:str) -> dict:
    """A checkpoint's loss scaler from AMP mode `was`, restored into a trainer of mode `now` by `restore_scaler`: it must warn, keep the
    scale of a fresh trainer of `now`, and its next step must have the gradient norm of a fresh one's (the same seed and batch;
    without clipping, so that the gradients left after the step are those the optimizer used: 65,536 × too large if the scale came over)."""
    device = ctx["device"]
    if why := amp_missing(device, was) or amp_missing(device, now): return dict(status="skipped", detail=why)
    old, s = check_trainer(ctx, was)
    old.train_step(*ctx["batch"], s)
    ck = dict(amp=old.amp.mode, scaler=old.scaler.state_dict(), epoch=1)    # what `qonstraint.train.save` records of them
    said, scales, norms = [], [], []
    for restored in (True, False):                                           # the resumed trainer, then a fresh one
        t, s = check_trainer(ctx, now)
        t.grad_clip = math.inf
        if restored: said = restore_into(t, ck)
        scales.append(t.scaler.get_scale())
        t.train_step(*ctx["batch"], s)
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in t.params if p.grad is not None]).item())
    ratio = norms[0]/norms[1]
    ok = bool(said) and scales[0] == scales[1] and 0.5 <= ratio <= 2
    return dict(status="ok" if ok else "failed",
                detail=f"{ck['amp']} -> {t.amp.mode}: scale {scales[0]:g} (fresh {scales[1]:g}), gradient norm {ratio:.3g} × a fresh step's, "
                       + ("warned" if said else "no warning"), warning=said[0] if said else None,
                numbers=dict(scale=scales[0], fresh_scale=scales[1], grad_norm=norms[0], fresh_grad_norm=norms[1], warnings=len(said)))


def check_bitwise(ctx:dict, deterministic:bool) -> dict:
    """Two fresh trainers of the same seed take the same 2 steps on the same batch: are their weights equal bit for bit? Reported,
    never failed; `deterministic`: under `seed_everything(0, deterministic=True)` (a kernel without a deterministic version: which)."""
    cublas, runs = os.environ.get("CUBLAS_WORKSPACE_CONFIG"), []
    try:
        with deterministic_kernels_explained():
            for _ in range(2):
                t, s = check_trainer(ctx, ctx["sizes"].amp, deterministic)
                for _ in range(2): t.train_step(*ctx["batch"], s)
                runs.append(weights(t))
    except QonstraintError as e: return dict(status="reported", detail=f"did not run: {' '.join(str(e).split())}"[:300])
    finally:
        seed_everything(0)                                   # deterministic algorithms off again, for what follows
        if cublas is None: os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    differ = sum(not torch.equal(a, b) for a, b in zip(*runs))
    diff = max((a.double() - b.double()).abs().max().item() for a, b in zip(*runs))
    return dict(status="reported", detail=f"amp {t.amp.mode}{', deterministic' if deterministic else ''}: "
                + ("equal bit for bit" if not differ else f"{differ} of {len(runs[0])} weight tensors differ, by at most {diff:.3g}"),
                numbers=dict(equal=not differ, differing_tensors=differ, tensors=len(runs[0]), max_abs_diff=diff))


def check_compile_limit(ctx:dict, opts:list[dict]) -> dict:
    """The compile option's time-limit decision, made before it compiles: skipped ('time limit…') with half the time it needs left,
    started with twice; a measured eager step (a stand-in of 1 s here) must raise what it needs."""
    opt, eager = next(o for o in opts if o["compile"]), ctx | dict(rows={"base": dict(seconds_per_step=1.0)})
    need, with_step, now = option_need(opt, ctx), option_need(opt, eager), time.perf_counter()
    short, enough = (time_limit_skip(opt, eager | dict(deadline=now + f*with_step)) for f in (0.5, 2))
    ok = (short or "").startswith("time limit") and enough is None and with_step > need
    return dict(status="ok" if ok else "failed",
                detail=f"needs {need:.0f} s, {with_step:.0f} s after a 1 s eager step; with {with_step/2:.0f} s left: "
                       f"{short or 'started'}; with {2*with_step:.0f} s left: {enough or 'started'}",
                numbers=dict(need_s=need, need_with_1s_step_s=with_step))


def checks(ctx:dict, opts:list[dict]) -> list[tuple]:
    "The checks in the order they run, as (name, function of no argument)."
    return [("sync debug, fp16", partial(check_sync_debug, ctx, "fp16")), ("sync debug, bf16", partial(check_sync_debug, ctx, "bf16")),
            ("fp16: inf gradient", partial(check_nonfinite, ctx, "fp16", math.inf)),
            ("bf16: NaN gradient", partial(check_nonfinite, ctx, "bf16", math.nan)),
            ("resume fp16 -> bf16", partial(check_resume, ctx, "fp16", "bf16")), ("resume bf16 -> fp16", partial(check_resume, ctx, "bf16", "fp16")),
            ("compile stopped by the time limit", partial(check_compile_limit, ctx, opts)),
            ("bitwise, 2 runs", partial(check_bitwise, ctx, False)), ("bitwise, deterministic", partial(check_bitwise, ctx, True))]


def run_check(name:str, check, ctx:dict) -> dict:
    "One check's row: name, status (ok, failed, skipped, reported), detail or error, numbers, wall_s; an exception is a failure."
    if why := time_limit_skip(dict(kind="check", compile=False), ctx): return dict(name=name, status="skipped", detail=why)
    start = time.perf_counter()
    try: row = check()
    except Exception as e: row = dict(status="failed", error=error_text(e), detail=f"at {innermost(e)}")
    free(ctx["device"])
    return dict(name=name) | row | dict(wall_s=round(time.perf_counter() - start, 1))


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
    c = r["check_counts"]
    print(f"checks: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped, {c['reported']} reported")
    w = max(len(x["name"]) for x in r["checks"])
    for x in r["checks"]: print(f"  {x['name'].ljust(w)}  {x['status'].ljust(8)}  {': '.join(filter(None, (x.get('error'), x.get('detail'))))}")
    print(f"{r['counts']['ok']} ran, {r['counts']['error']} failed, {r['counts']['skipped']} skipped, in {r['seconds']:.0f} s; wrote {r['out']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="the JSON result file (default bench/results/<gpu>-<date>.json)")
    p.add_argument("--time-limit-s", type=float, help=f"stop starting options this many seconds after the start (GPU {GPU.time_limit_s:.0f}, CPU {CPU.time_limit_s:.0f})")
    p.add_argument("--cpu", action="store_true", help="the CPU-sized version even on a GPU machine")
    p.add_argument("--compile", action="store_true", help="on the CPU, measure compile too (minutes)")
    p.add_argument("--ddp-cpu", type=int, default=0, metavar="N",
                   help="on the CPU, run the DDP option in N Gloo processes (a check that its code runs; slow)")
    p.add_argument("--strict", action="store_true", help="exit status 1 if an option that ran recorded an error, or a check failed")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    try: device = torch.device("cpu") if a.cpu else get_device("auto")
    except QonstraintError as e: raise SystemExit(f"bench/gpu.py: {e}")   # a GPU this PyTorch build cannot run: the fix, not a table
    if device.type == "mps": device = torch.device("cpu")
    sizes = GPU if device.type == "cuda" else CPU
    if device.type == "cpu": torch.set_num_threads(1)   # as bench/run.py: a check that the paths run, steady on a busy machine
    limit = a.time_limit_s if a.time_limit_s is not None else sizes.time_limit_s
    m = machine(device)
    peak = card_peak(m["gpu"]) if device.type == "cuda" else None
    images, labels = synthetic_data(sizes.images, device)
    bundle = stand_in_data(images, labels)                                                         # the host copy, for the DataLoader
    ddp_world = torch.cuda.device_count() if device.type == "cuda" else a.ddp_cpu
    ctx = dict(device=device, sizes=sizes, peak=peak, deadline=T0 + limit, rows={}, ddp_world=ddp_world,
               data=dict(images=images, labels=labels, bundle=bundle),
               check_data=dict(bundle=stand_in_data(images[:sizes.check_batch], labels[:sizes.check_batch])))
    ctx["batch"] = (normaliser(device)(images[:sizes.check_batch]).contiguous(),                  # the checks' one batch
                    torch.nn.functional.one_hot(labels[:sizes.check_batch], NUM_CLASSES).float())
    del images, labels
    opts = options(sizes, device, a.compile, ddp_world)
    checked = [run_check(name, check, ctx) for name, check in checks(ctx, opts)]
    check_counts = {k: sum(c["status"] == k for c in checked) for k in ("ok", "failed", "skipped", "reported")}
    rows = []
    for opt in opts:
        ddp = opt["kind"] == "ddp" and "skip" not in opt
        if ddp: ctx["data"] = dict(bundle=bundle); free(device)             # the GPUs to the DDP processes, whole
        rows.append(run_option(opt, ctx))
        ctx["rows"][opt["name"]] = rows[-1]
        if ddp: ctx["data"] |= dict(zip(("images", "labels"), synthetic_data(sizes.images, device)))
    counts = {k: sum(r["status"] == k for r in rows) for k in ("ok", "error", "skipped")}
    out = a.out or RESULTS/f"{re.sub(r'[^a-z0-9]+', '-', m['gpu'].lower()).strip('-') if device.type == 'cuda' else 'cpu'}-{datetime.date.today()}.json"
    r = dict(benchmark="bench/gpu.py", mode="cuda" if device.type == "cuda" else "cpu", machine=m, peak=peak,
             settings=dict(mode="GPU" if device.type == "cuda" else "CPU", preset=sizes.preset, batch=sizes.batch, eval_batch=sizes.eval_batch,
                           synthetic_images=sizes.images, warmup_steps=sizes.warmup, timed_steps=sizes.steps,
                           trainer="qonstraint.parts.build_run of the option's TrainConfig; batches: qonstraint.parts.train_stream "
                                   "(data_on_device: the device copy of the images; the DataLoader: a host copy of them)",
                           loader_warmup="warmup_steps + workers × prefetch_factor 2 (the workers' start-up and first batches)",
                           stochastic_steps="1 warm-up + 3 timed", time_limit_s=limit, epochs=EPOCHS, check_batch=sizes.check_batch,
                           train_flops_per_image="6 × count_macs (forward 2 FLOPs per MAC, backward 2 × forward)",
                           eval_flops_per_image="2 × count_macs", memory="CUDA: max_memory_allocated during the option less the "
                           "allocation before it (the synthetic data); the estimate: estimate_memory(swa=False).total; CPU: not measured",
                           macs={x["preset"]: macs(x["preset"]) for x in rows if x["status"] == "ok"} | {sizes.preset: macs(sizes.preset)}),
             results=rows, checks=checked, check_counts=check_counts, projection=projection(rows), counts=counts, seconds=round(time.perf_counter() - T0, 1), out=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print_report(r)
    best = r["projection"] or {}
    print(json.dumps(dict(mode=r["mode"], gpu=m["gpu"], best_option=best.get("option"), train_images_per_s=best.get("train_images_per_s"),
                          epoch_s=best.get("epoch_s"), run_h=best.get("run_h"), **counts, checks_failed=check_counts["failed"],
                          seconds=r["seconds"], out=str(out))))
    if a.strict and (counts["error"] or check_counts["failed"]): raise SystemExit(1)


if __name__ == "__main__": main()
