"""Render bench/RESULTS.md from every result file in bench/results/*.json: nothing on that page is typed by hand.

    python bench/report.py                       # what `make bench` ends with
    python bench/report.py --results DIR --out FILE

Each file is one run of one benchmark (its `benchmark` field: bench/run.py, bench/data.py or bench/gpu.py), rendered
under a heading that names the benchmark, the machine it ran on and its date, newest first within each benchmark.
bench/gpu.py's CPU-sized runs (`mode: cpu`) are labelled as what they are: a check that the script runs, not a GPU
result.
"""
from __future__ import annotations
import argparse, json
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ("bench/run.py", "bench/data.py", "bench/gpu.py")   # the page's sections, in this order
INTRO = {
    "bench/run.py": "The training path's speed on the machine it ran on, side by side in one run (`make bench`). "
                    "CPU timings move by several percent between runs: read them as rough, and not at all where the "
                    "load average (recorded since 2026-12-07) is above the machine's cores: other work shared them.",
    "bench/data.py": "TinyImageNet's data path at full size, on a synthetic `tiny-imagenet-200` folder of the "
                     "official layout and counts (`python bench/data.py`): the first load (locate, verify, decode, "
                     "cache) and the cached load, each in a fresh process.",
    "bench/gpu.py": "Training and evaluation throughput option by option on a CUDA GPU (`make bench-gpu`), with the "
                    "checks only a device run can make.",
}


def table(head:tuple, rows:list) -> list[str]:
    "A Markdown table."
    row = lambda cells: "| " + " | ".join(map(str, cells)) + " |"
    return [row(head), "|" + "---|"*len(head)] + [row(r) for r in rows]


def fmt(v, spec:str) -> str: return "–" if v is None else format(v, spec)


def machine_line(m:dict) -> str:
    "The machine a result ran on, in one line."
    gpu = ("no GPU" if m["gpu"] == "none" else
           f"GPU {m['gpu']} ×{m['gpu_count']} (driver {m.get('driver')}, CUDA {m['cuda']})")
    load = (f"; load average {m['load_avg_start']} at the start, {m['load_avg_end']} at the end"
            if "load_avg_start" in m else "")
    return f"**Machine:** {m['cpu']}, {m['cores']} cores, {gpu}; Python {m['python']}, torch {m['torch']}{load}."


def render_run(r:dict) -> list[str]:
    "bench/run.py: its own summary table (`run.summary_rows`)."
    from run import summary_rows                     # bench/run.py: the table it prints
    size = "`--full` sizes" if r.get("full") else "default sizes"
    text = (f"{size}, {r['seconds']:.0f} s. 5.9 costs {r['macs_5_9']/1e9:.2f} GMAC per 64×64 image, a TinyImageNet "
            f"epoch {r['epoch_tflop']:.0f} TFLOP; the paper's 333 s epoch on a P100 is "
            f"{r['paper_p100_utilisation']:.0%} of its fp32 peak. Rows marked PROJECTION are computed from MACs, "
            "not measured.")
    return [text, ""] + table(("benchmark", "result", "what"), summary_rows(r))


def render_data(r:dict) -> list[str]:
    "bench/data.py: seconds and memory per phase."
    d, a = r["dataset"], r["images"]
    phases = [(f"first load, {r['first']['workers']} workers", r["first"]), ("cached load", r["cached"]),
              ("first load, 1 worker", r["first_1worker"])]
    rows = [(n, fmt(p["seconds"], ".1f"), fmt(p["stages"]["decode"], ".1f"), fmt(p["stages"]["cache_read"], ".1f"),
             fmt(p["peak_rss_mib"], ",.0f"), fmt(p["added_over_arrays"], ".2f")) for n, p in phases]
    return [f"{d['jpegs']:,} JPEGs ({d['jpeg_kb']:.1f} kB each on average, {d['grayscale']:,} grayscale); arrays: "
            f"train {a['train']:,} + val {a['val']:,} + test {a['test']:,} images = {r['arrays_mib']:,.0f} MiB. The "
            f"first load with {r['first']['workers']} workers is {r['speedup']:.2f}× as fast as with 1; every load "
            f"returned the same arrays: {'yes' if r['same_arrays'] else 'NO'}. Wall time {r['wall_s']:.0f} s.", ""] + \
        table(("phase", "seconds", "decode s", "cache read s", "peak RSS MiB", "memory added / arrays"), rows)


def option_what(x:dict) -> str:
    "One bench/gpu.py option's settings, or what happened to it."
    if x["status"] != "ok": return f"{x['status'].upper()}: {x.get('error') or x.get('reason')}"
    data = f"loader/{x['workers']}w" if x["data"] == "loader" else x["data"]
    return (f"{x['preset']} b{x['batch']} {'compiled' if x['compile'] else 'eager'} {x['amp']} "
            f"{'channels_last' if x['channels_last'] else 'NCHW'} {data}{' checkpointed' if x['checkpoint'] else ''}")


def render_gpu(r:dict) -> list[str]:
    "bench/gpu.py: the options, the checks, the projection."
    label = [] if r["mode"] == "cuda" else [
        "**CPU-sized run: a check that the script runs, not a GPU result** (the tiny preset, a few steps, one "
        "thread).", ""]
    rows = [(x["name"], fmt(x.get("images_per_s"), ".0f"), fmt(x.get("step_peak_mib"), ".0f"),
             fmt(x.get("estimate_mib"), ".0f"), fmt(x.get("tflops"), ".3g"),
             fmt(x.get("peak_fraction") and 100*x["peak_fraction"], ".1f"), option_what(x)) for x in r["results"]]
    checks = [(c["name"], c["status"], ": ".join(filter(None, (c.get("error"), c.get("detail")))))
              for c in r.get("checks", [])]
    p = r["projection"]
    proj = ("no training option ran" if p is None else
            f"an epoch of 80,000 train + 20,000 val images {p['epoch_s']:.0f} s, {p['epochs']} epochs "
            f"{p['run_h']:.2f} h, at the best option ({p['option']}, {p['train_images_per_s']:.0f} img/s)")
    return label + [f"{r['settings']['preset']} at batch {r['settings']['batch']}, {r['seconds']:.0f} s. "
                    f"**PROJECTION** (from the measured rate, not a measured run): {proj}.", ""] + \
        table(("option", "img/s", "peak MiB", "est. MiB", "TFLOP/s", "% peak", "settings, or what happened"), rows) + \
        ["", "Checks:", ""] + table(("check", "status", "detail"), checks)


RENDER = {"bench/run.py": render_run, "bench/data.py": render_data, "bench/gpu.py": render_gpu}


def section(path:Path, r:dict) -> list[str]:
    "One result file: a heading with the benchmark, the machine and the date, then its tables."
    gpu = r["machine"]["gpu"]
    where = f"{gpu}" if gpu != "none" else f"CPU only, {r['machine']['cores']} cores"
    return [f"### {r['machine']['date'][:10]}, {where} (`{path.name}`)", "", machine_line(r["machine"]) + " Ran on "
            f"{r['machine']['date'].replace('T', ' ')}.", ""] + RENDER[r["benchmark"]](r) + [""]


def render(results:Path) -> str:
    "The whole page from every `*.json` in `results`."
    found = [(p, json.loads(p.read_text())) for p in sorted(results.glob("*.json"))]
    lines = ["# Benchmark results", "", "Generated by `python bench/report.py` (the last step of `make bench`) from "
             "every file in [`bench/results/`](results/): do not edit by hand. Each result names the machine it ran on "
             "and when.", ""]
    for bench in ORDER:
        mine = sorted(((p, r) for p, r in found if r.get("benchmark") == bench),
                      key=lambda x: x[1]["machine"]["date"], reverse=True)   # newest first
        lines += [f"## `{bench}`", "", INTRO[bench], ""]
        lines += [l for p, r in mine for l in section(p, r)] or ["No result yet.", ""]
    unknown = [p.name for p, r in found if r.get("benchmark") not in ORDER]
    if unknown: lines += ["## Not rendered", "", "Files with no known `benchmark` field: " + ", ".join(unknown), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=BENCH/"results", help="the folder of result files")
    ap.add_argument("--out", type=Path, default=BENCH/"RESULTS.md", help="the page to write")
    a = ap.parse_args()
    a.out.write_text(render(a.results))
    print(f"wrote {a.out}")


if __name__ == "__main__": main()
