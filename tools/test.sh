#!/usr/bin/env bash
# Every test of the project, in the order a reviewer would check them:
#   1. the library is in sync with the notebooks (nbdev_export changes nothing in qonstraint/),
#   2. the notebooks are clean (nbdev_clean changes nothing in nbs/), valid nbformat, and every code cell compiles;
#      README.md is what nbs/index.ipynb gives (tools/readme.py) and bench/RESULTS.md what bench/results/ gives
#      (bench/report.py); no line of the library is over 120 characters,
#   3. the GPU benchmark runs in its CPU-sized version (bench/gpu.py --strict) and writes its JSON: it cannot rot between GPU runs,
#   4. every notebook's tests pass (nbdev_test; cells flagged `slow` are skipped).
# A step that changes files fails, and leaves the changed files for you to review and commit.
set -uo pipefail
cd "$(dirname "$0")/.."
# nbdev_test runs notebooks in parallel processes, one per core: one thread each avoids oversubscription
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

snapshot() { find "$@" -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -print0 \
               | sort -z | xargs -0 sha1sum; }
unchanged() {  # unchanged WHAT DIR CMD...: run CMD and fail if it changed files in DIR
  local what=$1 dir=$2; shift 2
  local before after; before=$(snapshot "$dir")
  "$@" >/dev/null || { echo "FAIL: '$*' did not run"; exit 1; }
  after=$(snapshot "$dir")
  if [ "$before" != "$after" ]; then
    echo "FAIL: $what: '$*' changed these files (now changed on disk: review, commit, and edit the notebook, not the .py):"
    diff <(echo "$before") <(echo "$after") | grep '^>' | awk '{print "  " $3}'
    exit 1
  fi
  echo "ok: $what"
}

unchanged "qonstraint/ is in sync with nbs/" qonstraint nbdev_export
unchanged "notebooks are clean" nbs nbdev_clean
python -c "
import glob, sys, warnings, nbformat
warnings.simplefilter('ignore')
bad = []
for p in sorted(glob.glob('nbs/*.ipynb')):
    try: nbformat.validate(nbformat.read(p, 4))
    except nbformat.ValidationError as e: bad.append(f'{p}: {str(e).splitlines()[0]}')
print('\n'.join(['FAIL: notebooks that are not valid nbformat (papermill refuses them):'] + bad) if bad else 'ok: notebooks are valid nbformat')
sys.exit(bool(bad))" || exit 1

# nbdev_test (execnb) reports a cell's exception but not a cell that does not compile: a test cell with a syntax error
# would pass silently, so every code cell must compile (IPython's %magics and !commands aside)
python - <<'PY' || exit 1
import glob, json, sys
bad = []
for p in sorted(glob.glob("nbs/*.ipynb")):
    for i, c in enumerate(json.load(open(p, encoding="utf-8"))["cells"]):
        if c["cell_type"] != "code": continue
        src = "\n".join(l for l in "".join(c["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))
        try: compile(src, f"{p}, cell {i}", "exec")
        except SyntaxError as e: bad.append(f"  {p}, cell {i}, line {e.lineno}: {e.msg}")
print("\n".join(["FAIL: code cells that do not compile (nbdev_test would skip them silently):"] + bad) if bad
      else "ok: every code cell compiles")
sys.exit(bool(bad))
PY

python tools/readme.py --check || exit 1
echo "ok: README.md is what nbs/index.ipynb gives"
pages=$(mktemp -d)
python bench/report.py --out "$pages/RESULTS.md" >/dev/null || { echo "FAIL: 'python bench/report.py' did not run"; exit 1; }
if ! cmp -s "$pages/RESULTS.md" bench/RESULTS.md; then
  echo "FAIL: bench/RESULTS.md is not what bench/results/ gives. Fix: python bench/report.py"; exit 1
fi
rm -rf "$pages"
echo "ok: bench/RESULTS.md is what bench/results/ gives"
python - <<'PY' || exit 1
import glob, sys
long = [f"  {p}:{i}: {len(l)} characters" for p in sorted(glob.glob("qonstraint/*.py")) if not p.endswith("_modidx.py")
        for i, l in enumerate(open(p, encoding="utf-8").read().splitlines(), 1)
        if len(l) > 120 and not l.startswith("__all__ = [")]   # nbdev writes __all__'s first line past 120 itself
print("\n".join(["FAIL: lines over 120 characters in qonstraint/ (shorten them in the notebook that exports them):"] + long)
      if long else "ok: no line of qonstraint/*.py is over 120 characters")
sys.exit(bool(long))
PY

bench=$(mktemp -d)   # with a time limit it never reaches, even on a busy machine: every option that can run on the CPU must run
if ! python bench/gpu.py --cpu --strict --time-limit-s 600 --out "$bench/gpu.json" >"$bench/out.txt" 2>&1; then
  echo "FAIL: 'python bench/gpu.py --cpu --strict' (its CPU-sized version) failed; its output:"; cat "$bench/out.txt"; exit 1
fi
python - "$bench/gpu.json" <<'PY' || { cat "$bench/out.txt"; exit 1; }
import json, sys
r = json.load(open(sys.argv[1]))
bad = [f"no {k!r}" for k in ("mode", "machine", "peak", "settings", "results", "projection", "counts", "seconds") if k not in r]
bad += [f"machine: no {k!r}" for k in ("gpu", "gpu_count", "driver", "cuda", "torch", "python", "cpu", "cores", "date") if k not in r.get("machine", {})]
rows = r.get("results", [])
bad += [f"{x['name']}: {x['status']}: {x.get('error') or x.get('reason')}" for x in rows
        if x["status"] == "error" or (x["status"] == "skipped" and x["reason"].startswith("time limit"))]
bad += [f"{x['name']}: no {k!r}" for x in rows if x["status"] == "ok" for k in ("images_per_s", "tflops", "estimate_mib", "step_peak_mib") if k not in x]
bad += [f"no {k} option ran" for k in ("train", "eval", "stochastic") if not any(x["kind"] == k and x["status"] == "ok" for x in rows)]
if "projection" in r and not r["projection"]: bad.append("no projection (no training option ran)")
checks = r.get("checks", [])   # on the CPU every check runs but sync debug (no CUDA); a failed one is a failure
bad += ["no checks"] if not checks else [f"check {c['name']}: {c['status']}: {c.get('error') or c.get('detail')}" for c in checks
        if c["status"] not in ("ok", "reported") and not (c["status"] == "skipped" and c["name"].startswith("sync debug")
                                                         and c["detail"] == "no CUDA")]
print("\n".join(["FAIL: bench/gpu.py's JSON:"] + bad) if bad else
      f"ok: bench/gpu.py runs (CPU-sized: {r['counts']['ok']} options ran, {r['counts']['skipped']} skipped, "
      f"{sum(c['status'] in ('ok', 'reported') for c in checks)} checks passed or reported, in {r['seconds']:.0f} s)")
sys.exit(bool(bad))
PY
rm -rf "$bench"

start=$(date +%s)
log=$(mktemp)
nbdev_test --do_print --timing 2> >(tee "$log.err" >&2) | tee "$log"
status=${PIPESTATUS[0]}
sleep 0.2  # let the stderr tee finish
ran=$(grep -c '^- Completed' "$log")
failed=$(grep -c $'^\t' "$log.err" || true)
echo "nbdev_test took $(( $(date +%s) - start )) s"
echo "notebooks: $((ran - failed)) passed, $failed failed"
rm -f "$log" "$log.err"
exit "$status"
