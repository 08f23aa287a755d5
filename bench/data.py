"""TinyImageNet's data path at full size: the first load (locate + verify + decode + cache) and the cached load.

    python bench/data.py                  # 4-5 minutes on 2 CPU cores, 1.5-2 of them writing the folder
    python bench/data.py --keep           # keep the folder: the next run skips writing it
    python bench/data.py --root DIR --workers 4 --repeat 2

Writes a synthetic folder in the exact `tiny-imagenet-200` layout with `qonstraint.testing.make_fake_tinyimagenet`:
200 classes x 500 train JPEGs, 10,000 val JPEGs listed in `val/val_annotations.txt`, 10,000 unlabelled test JPEGs,
one image in 50 grayscale, ~2.8 kB per JPEG (the official zip: 248 MB for its 120,000). It is written once under
--root (default: <temp dir>/qonstraint-bench-data), reused while its marker file says it is complete, and deleted
at the end unless --keep. Every file is read once before timing, so both first loads find it in the page cache:
they compare decoding, not the disk. Then `load_dataset("tinyimagenet", root=..., cache=..., workers=...)` runs in
a fresh process for each phase:

    first load       empty cache folder: locate + verify + decode (--workers processes; default: usable cores) + cache write
    cached load      the same call again: locate + verify + read the cache
    first, 1 worker  the first load with workers=1: the speed-up is measured here, side by side

For each phase: seconds, split into stages (locate + verify, decode, cache write, cache read, split + channel
stats), and the CPU seconds of the process and its workers (CPU s / s: the cores it got; other work on the machine
shows there, and in the load averages printed); the phase process's peak resident memory (VmHWM) and its resident
memory before loading (Python, torch); the peak memory of the process and its decoding workers together (the sum of
their PSS, sampled every 0.1 s) above their PSS before loading; the size of the arrays the load returns (train + val
+ test uint8 images); and whether every load returned the same arrays (a SHA-1 of them, taken after the timing).

Prints the tables with the machine it ran on and, as its last line, one JSON object (also written to
bench/results/data-<machine>-<date>.json, or --out, which bench/report.py renders into bench/RESULTS.md): machine (with
the load average at the start and the end); dataset (jpegs, jpeg_kb, grayscale, write_s: seconds to write it, null if reused);
arrays_mib; images; repeat; per phase (first, cached, first_1worker): workers, seconds, stages, cpu_s, peak_rss_mib,
start_rss_mib, peak_pss_mib, start_pss_mib, peak_over_arrays (peak RSS / arrays), added_over_arrays ((peak - start
RSS) / arrays), added_pss_over_arrays; all_first_s and all_first_1worker_s (every repeat); same_arrays; speedup
(first load with 1 worker / with --workers) and wall_s.
"""
from __future__ import annotations
import argparse, contextlib, datetime, hashlib, json, os, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

SIZE = dict(n_classes=200, n_train=500, n_val=50, n_test=10_000, gray_every=50, seed=0)   # the official counts
MARKER = "complete.json"                        # written last: the folder under --root is whole
STAGES = ("locate_verify", "decode", "cache_write", "cache_read", "split_stats")


def mib(n_bytes:float) -> float: return n_bytes/2**20


def proc_kib(field:str, pid="self") -> int:
    "A `kB` field of /proc/<pid>/status (VmHWM: peak resident, VmRSS: resident now)."
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith(field + ":"))


def pss_kib(pid:int) -> int:
    "Proportional set size of a process, kB: its private memory plus its share of memory shared with others."
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:"))


def cpu_s() -> float:
    "CPU seconds of this process and of its children that have finished (the decoding workers)."
    import resource
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


# ---- the phase, in its own process --------------------------------------------------------------------------------

def run_phase(root:Path, cache:Path, workers:int|None) -> dict:
    "One `load_dataset` call, timed by stage, with the memory it took."
    import qonstraint.data as qd, qonstraint.tinyimagenet as qt
    start_rss, start_pss = proc_kib("VmRSS"), pss_kib(os.getpid())
    spent = dict(locate=0.0, arrays=0.0, decode=0.0, cache_write=0.0, cache_read=0.0)

    def timed(key, fn):                         # the library calls these through its module: wrap them there
        def wrapper(*a, **k):
            t = time.perf_counter()
            try: return fn(*a, **k)
            finally: spent[key] += time.perf_counter() - t
        return wrapper
    for module, key, name in ((qd, "locate", "find_tinyimagenet"), (qd, "arrays", "tinyimagenet_arrays"),
                              (qt, "decode", "decode_images"), (qt, "cache_read", "_load_cache")):
        setattr(module, name, timed(key, getattr(module, name)))
    write = qt.atomic_write
    @contextlib.contextmanager
    def timed_write(*a, **k):                   # np.savez, fsync and rename of the cache file
        t = time.perf_counter()
        with write(*a, **k) as f: yield f
        spent["cache_write"] += time.perf_counter() - t
    qt.atomic_write = timed_write

    t, cpu0 = time.perf_counter(), cpu_s()
    d = qd.load_dataset("tinyimagenet", root=root, cache=cache, workers=workers)
    total, cpu = time.perf_counter() - t, cpu_s() - cpu0
    stages = dict(locate_verify=spent["locate"] + spent["arrays"] - spent["decode"] - spent["cache_write"] - spent["cache_read"],
                  decode=spent["decode"], cache_write=spent["cache_write"], cache_read=spent["cache_read"],
                  split_stats=total - spent["locate"] - spent["arrays"])
    digest = hashlib.sha1()                     # after the timing: the arrays, to compare the loads' results
    for split in (d.train, d.val, d.test): digest.update(split.images.data); digest.update(split.labels.data)
    return dict(seconds=total, stages=stages, cpu_s=cpu, digest=digest.hexdigest(), peak_rss_mib=proc_kib("VmHWM")/1024,
                start_rss_mib=start_rss/1024, start_pss_mib=start_pss/1024,
                arrays_mib=mib(sum(s.images.nbytes for s in (d.train, d.val, d.test))),
                images=dict(train=len(d.train), val=len(d.val), test=len(d.test)))


# ---- the driver ---------------------------------------------------------------------------------------------------

def tree_pss_kib(pid:int) -> int:
    "The PSS of `pid` and its descendants, summed: the memory they take together, shared pages counted once."
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError): parent[int(d.name)] = int((d/"stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, total = {pid}, 0
    while (more := {p for p, pp in parent.items() if pp in tree} - tree): tree |= more
    for p in tree:
        with contextlib.suppress(OSError, StopIteration): total += pss_kib(p)
    return total


def phase(name:str, root:Path, cache:Path, workers:int|None) -> dict:
    "Run one phase in a fresh process, sampling the memory of it and its workers; its result dict."
    cmd = [sys.executable, __file__, "--phase", name, "--root", str(root), "--cache", str(cache)]
    if workers is not None: cmd += ["--workers", str(workers)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    def sample():
        while p.poll() is None:
            with contextlib.suppress(Exception): peak[0] = max(peak[0], tree_pss_kib(p.pid))
            time.sleep(0.1)
    sampler = threading.Thread(target=sample, daemon=True); sampler.start()
    out, err = p.communicate(); sampler.join()
    if p.returncode: sys.exit(f"phase {name!r} failed (exit {p.returncode}):\n{err[-4000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r.update(workers=workers, peak_pss_mib=peak[0]/1024)
    r.update(peak_over_arrays=r["peak_rss_mib"]/r["arrays_mib"],
             added_over_arrays=(r["peak_rss_mib"] - r["start_rss_mib"])/r["arrays_mib"],
             added_pss_over_arrays=(r["peak_pss_mib"] - r["start_pss_mib"])/r["arrays_mib"])
    return r


def ensure_folder(root:Path) -> tuple[Path, float|None]:
    "The synthetic `tiny-imagenet-200` under `root`, written unless complete; seconds spent writing it (None: reused)."
    from qonstraint.core import TINY_DIR
    from qonstraint.testing import make_fake_tinyimagenet
    marker, folder = root/MARKER, root/TINY_DIR
    if marker.is_file() and json.loads(marker.read_text()) == SIZE and (folder/"wnids.txt").is_file(): return folder, None
    marker.unlink(missing_ok=True)
    if folder.exists(): shutil.rmtree(folder)                       # half-written by an interrupted run
    print(f"writing a full-size synthetic {TINY_DIR} under {root} (once; --keep keeps it) ...", file=sys.stderr)
    t = time.perf_counter()
    make_fake_tinyimagenet(root, **SIZE)
    marker.write_text(json.dumps(SIZE))
    return folder, time.perf_counter() - t


def describe(folder:Path) -> dict:
    "The synthetic folder's JPEGs: how many, their mean size, how many are grayscale; reads every file (page cache)."
    from PIL import Image
    n = size = gray = 0
    for p in folder.rglob("*.JPEG"):
        size += len(p.read_bytes()); n += 1
        with Image.open(p) as im: gray += im.mode == "L"
    return dict(jpegs=n, jpeg_kb=size/n/1000, grayscale=gray)


def machine_here() -> dict:
    "What this benchmark ran on (bench/machine.py), with the versions of the decoding's libraries."
    import numpy, PIL, torch
    from machine import machine
    return machine(torch.device("cpu")) | dict(numpy=numpy.__version__, pillow=PIL.__version__, date=datetime.date.today().isoformat())


def print_table(head:tuple, rows:list[tuple]):
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]: print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def main(args):
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    from qonstraint.decode import usable_cores
    root = Path(args.root)
    folder, write_s = ensure_folder(root)
    data = describe(folder) | dict(write_s=write_s)
    workers = args.workers or usable_cores()
    caches = Path(tempfile.mkdtemp(prefix="qonstraint-bench-cache-"))
    runs = dict(first=[], first_1worker=[])
    try:
        for i in range(args.repeat):            # alternated, each with an empty cache: both see the same machine
            runs["first"].append(phase("first", folder, caches/"a", workers))
            if i == 0: cached = phase("cached", folder, caches/"a", workers)
            shutil.rmtree(caches/"a")
            runs["first_1worker"].append(phase("first_1worker", folder, caches/"b", 1))
            shutil.rmtree(caches/"b")
    finally:
        shutil.rmtree(caches, ignore_errors=True)
        if not args.keep: shutil.rmtree(root, ignore_errors=True)
    first, one = (min(runs[k], key=lambda r: r["seconds"]) for k in ("first", "first_1worker"))   # the fastest of each
    m, a, load1 = machine_here(), first["images"], os.getloadavg()[0]
    rows = [(f"first load, {workers} workers", first), ("cached load", cached), ("first load, 1 worker", one)]
    print(f"TinyImageNet data path at full size (bench/data.py), {m['date']}")
    print(f"machine: {m['cpu']}, {m['usable_cores']} usable cores of {m['cores']}; Python {m['python']}, torch {m['torch']}, "
          f"numpy {m['numpy']}, Pillow {m['pillow']}; load average {load0:.1f} at the start, {load1:.1f} at the end")
    print(f"dataset: synthetic tiny-imagenet-200, {data['jpegs']:,} JPEGs ({data['jpeg_kb']:.1f} kB each on average, "
          f"{data['grayscale']:,} grayscale); " + (f"written in {write_s:.0f} s" if write_s else "reused (--keep)"))
    print(f"arrays: train {a['train']:,} + val {a['val']:,} + test {a['test']:,} images, uint8 = {first['arrays_mib']:,.0f} MiB")
    if args.repeat > 1: print(f"first loads: the fastest of {args.repeat} each, alternated")
    print("\nseconds")
    print_table(("phase", "total", "locate+verify", "decode", "cache write", "cache read", "split+stats", "CPU s"),
                [(name, f"{r['seconds']:.1f}", *(f"{r['stages'][k]:.1f}" for k in STAGES), f"{r['cpu_s']:.1f}") for name, r in rows])
    print("\nmemory, MiB (peak RSS: the loading process; PSS: it and its decoding workers together)")
    print_table(("phase", "peak RSS", "RSS before", "peak/arrays", "(peak-before)/arrays", "PSS added", "PSS added/arrays"),
                [(name, f"{r['peak_rss_mib']:,.0f}", f"{r['start_rss_mib']:,.0f}", f"{r['peak_over_arrays']:.2f}",
                  f"{r['added_over_arrays']:.2f}", f"{r['peak_pss_mib'] - r['start_pss_mib']:,.0f}",
                  f"{r['added_pss_over_arrays']:.2f}") for name, r in rows])
    same = len({r["digest"] for r in [cached, *runs["first"], *runs["first_1worker"]]}) == 1
    speedup = one["seconds"]/first["seconds"]
    wall = time.perf_counter() - t0
    print(f"\nfirst load with {workers} workers: {speedup:.2f}x as fast as with 1 (decode alone: "
          f"{one['stages']['decode']/first['stages']['decode']:.2f}x); cached load {first['seconds']/cached['seconds']:.1f}x "
          f"as fast as the first; the same arrays from every load: {'yes' if same else 'NO'}; wall time of this run {wall:.0f} s")
    keep = ("workers", "seconds", "stages", "cpu_s", "peak_rss_mib", "start_rss_mib", "peak_pss_mib", "start_pss_mib",
            "peak_over_arrays", "added_over_arrays", "added_pss_over_arrays")
    rnd = lambda v: {k: rnd(x) for k, x in v.items()} if isinstance(v, dict) else round(v, 3) if isinstance(v, float) else v
    r = dict(machine=m | dict(load_avg_start=round(load0, 2), load_avg_end=round(load1, 2)), dataset=rnd(data),
             arrays_mib=round(first["arrays_mib"], 1), images=a, repeat=args.repeat,
             first=rnd({k: first[k] for k in keep}), cached=rnd({k: cached[k] for k in keep}),
             first_1worker=rnd({k: one[k] for k in keep}),
             all_first_s=[round(r["seconds"], 2) for r in runs["first"]],
             all_first_1worker_s=[round(r["seconds"], 2) for r in runs["first_1worker"]],
             same_arrays=same, speedup=round(speedup, 2), wall_s=round(wall, 1))
    from machine import write_result
    print(f"wrote {write_result('data', r, args.out and Path(args.out))}")
    print(json.dumps(r))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir())/"qonstraint-bench-data"),
                    help="folder for the synthetic tiny-imagenet-200 (written once, reused while complete)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic folder when done (default: delete it)")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes of the first load (default: usable cores)")
    ap.add_argument("--repeat", type=int, default=1, help="first loads of each kind, alternated; the fastest is reported")
    ap.add_argument("--out", help="the JSON result file (default bench/results/data-<machine>-<date>.json)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)           # internal: run one phase in this process
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase: print(json.dumps(run_phase(Path(args.root), Path(args.cache), args.workers)))
    else: main(args)
