#!/usr/bin/env bash
# Every test of the project, in the order a reviewer would check them:
#   1. the library is in sync with the notebooks (nbdev_export changes nothing in qonstraint/),
#   2. the notebooks are clean (nbdev_clean changes nothing in nbs/) and valid nbformat,
#   3. every notebook's tests pass (nbdev_test; cells flagged `slow` are skipped).
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
