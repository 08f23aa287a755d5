#!/usr/bin/env bash
# The library's tests in a virtual environment of their own, on a named set of dependency versions:
#   tools/test_env.sh SET [NOTEBOOK...]     SET: a file tools/requirements/SET.txt (floor, kaggle)
# It builds .venv-SET/ (git-ignored; built anew whenever the set, settings.ini or setup.py changes, or with FRESH=1):
# torch 2.14.1 and torchvision 0.29.1 (what is at hand; the sets pin no torch), the set's pins, the package (editable)
# and the dev tools of settings.ini's dev_requirements (less jupyterlab and imagecorruptions-imaug, which no test of the sets uses), then runs nbdev_test
# there: on the notebooks named (nbs/NAME.ipynb), or on every notebook when none is named. It prints the versions it ran on.
set -euo pipefail
cd "$(dirname "$0")/.."
set_name=${1:?usage: tools/test_env.sh SET [NOTEBOOK...]   (SET: $(ls tools/requirements | sed 's/\.txt$//' | tr '\n' ' '))}
shift
reqs=tools/requirements/$set_name.txt
[ -f "$reqs" ] || { echo "FAIL: no $reqs"; exit 1; }
PYTHON=${PYTHON:-python3}
venv=.venv-$set_name
TORCH="torch==2.14.1 torchvision==0.29.1"

# torch's stack (torch, torchvision and the CUDA wheels they pull: 6 GB) is the same in every set: when .venv/ (make install)
# has torch 2.14.1 and torchvision 0.29.1 on this Python, hard-link their files from it rather than unpack them again (minutes)
link_torch() {
  local main=.venv/bin/python
  [ -x "$main" ] || return 0
  "$main" - "$1" "$reqs" <<'PY' || true
import os, re, shutil, sys, sysconfig
from importlib.metadata import distributions
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
venv, reqs = sys.argv[1:]
dst_py = os.path.abspath(os.path.join(venv, "bin", "python"))
src_site = sysconfig.get_paths()["purelib"]
dst_site = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
if not os.path.isdir(dst_site): sys.exit(0)                                   # another Python: pip installs torch
dists = {canon(d.metadata["Name"]): d for d in distributions(path=[src_site])}
if any(n not in dists or dists[n].version != v for n, v in (("torch", "2.14.1"), ("torchvision", "0.29.1"))): sys.exit(0)
pinned = {canon(m.group(1)) for l in open(reqs) if (m := re.match(r"\s*([A-Za-z0-9_.-]+)\s*[=<>!~]", l))}
todo, extras_of = [("torch", frozenset()), ("torchvision", frozenset())], {}
while todo:                                    # torch, torchvision and what they need, less what the set pins (pip installs those)
    name, extras = todo.pop()
    if name in pinned or name not in dists or (name in extras_of and extras <= extras_of[name]): continue
    extras_of[name] = extras_of.get(name, frozenset()) | extras
    for r in map(Requirement, dists[name].requires or []):
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras_of[name] | {""}):
            todo.append((canon(r.name), frozenset(r.extras)))
n = 0
for name in extras_of:
    for f in dists[name].files or []:
        src = os.path.normpath(os.path.join(src_site, f))
        if not os.path.isfile(src): continue
        rel = os.path.relpath(src, src_site)
        dst = os.path.normpath(os.path.join(dst_site, rel))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if rel.startswith(".."):                   # a console script (torchrun): its first line names .venv's python
            lines = open(src, "rb").read().split(b"\n", 1)
            if lines[0].startswith(b"#!"): lines[0] = b"#!" + dst_py.encode()
            open(dst, "wb").write(b"\n".join(lines)); shutil.copymode(src, dst)
        else:
            try: os.link(src, dst)
            except OSError: shutil.copy2(src, dst)     # another file system
        n += 1
print(f"linked {len(extras_of)} distributions ({n} files) from .venv: {', '.join(sorted(extras_of))}")
PY
}

stamp=$(cat "$reqs" settings.ini setup.py "$0" | sha1sum | cut -c1-12)
if [ "${FRESH:-0}" = 1 ] || [ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]; then
  echo "building $venv ($reqs)"
  start=$(date +%s)
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  link_torch "$venv"
  # the dev tools, less jupyterlab and imagecorruptions-imaug (no test of these sets uses them; the latter pulls opencv,
  # scikit-image and numba, which need newer numpy than the floors) and less what the set pins itself (fastcore: the set's)
  pinned=$(sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/\1/p' "$reqs" | paste -sd'|')
  dev=$(sed -n 's/^dev_requirements *= *//p' settings.ini | tr ' ' '\n' | grep -Ev '^(jupyterlab|imagecorruptions-imaug)([=<>!~ ]|$)' | grep -Eiv "^(${pinned:-.^})([=<>!~ ]|$)" | tr '\n' ' ')
  # one resolve: the set's == pins hold, everything it leaves out is the newest that fits them
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet $TORCH -r "$reqs" -e . $dev 2>&1 | { grep -v 'is ignored: it is neither a file' || true; }
  echo "$stamp" >"$venv/.installed"
  echo "built $venv in $(( $(date +%s) - start )) s"
fi

"$venv/bin/python" - "$reqs" <<'PY'
import sys, re
from importlib.metadata import version
names = ["torch", "torchvision", "timm", "numpy", "pandas", "matplotlib", "seaborn", "scikit-learn", "scipy", "pillow",
         "safetensors", "papermill", "tqdm", "fastcore", "onnx", "onnxruntime", "ipython", "nbdev", "execnb"]
pins = dict(re.match(r"([A-Za-z0-9_.-]+)==(\S+)", l).groups() for l in open(sys.argv[1]) if re.match(r"[A-Za-z0-9_.-]+==", l))
bad = [f"{n}=={v} (installed {version(n)})" for n, v in pins.items() if version(n) != v]
print(f"{sys.argv[1]} ({sys.version.split()[0]}): " + ", ".join(f"{n} {version(n)}" for n in names))
if bad: sys.exit("FAIL: installed versions differ from the set's pins: " + ", ".join(bad))
PY

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # nbdev_test runs notebooks in parallel processes, one per core
export PATH="$PWD/$venv/bin:$PATH"
# this set's environment, even when make test runs from an activated .venv: IPython puts $VIRTUAL_ENV's site-packages
# on the kernel's path, which would mix the main environment's packages into the set's
export VIRTUAL_ENV="$PWD/$venv"
names=()
for nb in "$@"; do nb=$(basename "${nb%.ipynb}"); [ -f "nbs/$nb.ipynb" ] || { echo "FAIL: no nbs/$nb.ipynb"; exit 1; }; names+=("$nb"); done
select=()  # nbdev_test takes one path: the named notebooks are picked by a regular expression on their file names
[ ${#names[@]} -gt 0 ] && select=(--file_re "^($(IFS='|'; echo "${names[*]}"))\.ipynb\$")
start=$(date +%s)
log=$(mktemp)
set +e
nbdev_test --do_print --timing "${select[@]}" 2> >(tee "$log.err" >&2) | tee "$log"
status=${PIPESTATUS[0]}
set -e
sleep 0.2  # let the stderr tee finish
ran=$(grep -c '^- Completed' "$log" || true)
failed=$(grep -c $'^\t' "$log.err" || true)
rm -f "$log" "$log.err"
echo "$set_name: nbdev_test took $(( $(date +%s) - start )) s"
echo "$set_name: $((ran - failed)) passed, $failed failed"
exit "$status"
