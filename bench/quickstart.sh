#!/usr/bin/env bash
# The quickstart end to end: `tunelens run examples/quickstart.yaml` into a fresh temporary folder, then each
# stage's wall time (from run.json). Last line: quickstart: seconds=X
#   bench/quickstart.sh [CONFIG]        (default examples/quickstart.yaml; needs `make install` first)
# The run goes to a temporary folder, removed at the end; set QUICKSTART_OUT=DIR (a new folder) to keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-examples/quickstart.yaml}"
BIN="${TUNELENS_BIN:-.venv/bin}"
if [ -n "${QUICKSTART_OUT:-}" ]; then
  OUT="$QUICKSTART_OUT"
  mkdir -p "$OUT"
else
  OUT="$(mktemp -d "${TMPDIR:-/tmp}/tunelens-quickstart.XXXXXX")"
  trap 'rm -rf "$OUT"' EXIT
fi

start=$(date +%s.%N)
status=0
"$BIN/tunelens" run "$CONFIG" --out "$OUT/run" --no-progress || status=$?
end=$(date +%s.%N)

"$BIN/python" - "$OUT/run/run.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
for stage in run["order"]:
    s = run["stages"][stage]
    secs = "-" if s["seconds"] is None else f"{s['seconds']:.1f}"
    print(f"{stage:7s} {s['status']:8s} {secs:>8s} s" + (f"  {s['error']}" if s.get("error") else ""))
PY
[ "$status" -eq 0 ] || echo "tunelens run exited with $status" >&2
python3 -c "print(f'quickstart: seconds={$end - $start:.1f}')"
exit "$status"
