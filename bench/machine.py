"""What a benchmark ran on: the one description that bench/run.py, bench/gpu.py and bench/data.py record."""
from __future__ import annotations
import datetime, json, os, platform, re, subprocess
from pathlib import Path

import torch

from qonstraint.decode import usable_cores


def cpu_name() -> str:
    "The CPU's model name (from /proc/cpuinfo where there is one)."
    if not os.path.exists("/proc/cpuinfo"): return platform.processor()
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())


def driver_version() -> str|None:
    "The NVIDIA driver's version, from nvidia-smi (None without it)."
    try: out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError): return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine(device:torch.device|None=None) -> dict:  # None: the first GPU if there is one, else the CPU
    "CPU, cores, GPU, driver, CUDA, cuDNN, Python, torch, platform, date."
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = dict(cpu=cpu_name(), cores=os.cpu_count(), usable_cores=usable_cores(), python=platform.python_version(),
             torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), platform=platform.platform(),
             date=datetime.datetime.now().isoformat(timespec="seconds"), gpu="none", gpu_count=0, driver=None)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        m |= dict(gpu=p.name, gpu_count=torch.cuda.device_count(), capability=f"sm_{p.major}{p.minor}",
                  gpu_memory_gib=round(p.total_memory/2**30, 1), driver=driver_version())
    return m


RESULTS = Path(__file__).resolve().parent/"results"   # every benchmark's JSON, rendered into bench/RESULTS.md by report.py


def machine_slug(m:dict) -> str:
    "A file-name word for the machine: the GPU's name (`nvidia-tesla-t4`), else the CPU's cores (`cpu-2cores`)."
    if m["gpu"] != "none": return re.sub(r"[^a-z0-9]+", "-", m["gpu"].lower()).strip("-")
    return f"cpu-{m['cores']}cores"


def write_result(benchmark:str, r:dict, out:Path|None=None, size:str|None=None) -> Path:
    "Write `r` (with its `machine`) to `out` (default: results/<benchmark>-<machine>[-<size>]-<date>.json)."
    name = "-".join(filter(None, (benchmark, machine_slug(r["machine"]), size, r["machine"]["date"][:10])))
    out = out or RESULTS/f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(benchmark=f"bench/{benchmark}.py") | r, indent=2) + "\n")
    return out
