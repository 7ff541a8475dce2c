#!/usr/bin/env bash
# The GPU-hour check (issue 16): on a CUDA machine, the gpu-marked tests and the GPU bench at
# 224 px with the machine's own torch, installing nothing; on a machine without CUDA, the same
# steps as a rehearsal at tiny sizes on the CPU. Writes OUT/gpu_check.json (every step, its exit
# status and seconds, the bench result) and prints a short table (also OUT/gpu_check.txt).
#
#   scripts/gpu_check.sh                 # or: make gpu-check
#   PYTHON=/opt/conda/bin/python OUT=/tmp/gc scripts/gpu_check.sh
#   GPU_CHECK_MODE=rehearsal scripts/gpu_check.sh   # force the CPU rehearsal
#
# Runs from the repository root with PYTHONPATH=. (no install needed); Ray, Optuna, W&B and
# Captum may be missing: what needs them is skipped and says so.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-results/gpu_check}"
mkdir -p "$OUT/steps"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
T_START=$(date +%s)

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu-check: $PY cannot import torch; set PYTHON to the interpreter that has it" >&2
  exit 2
fi
MODE="${GPU_CHECK_MODE:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "rehearsal")')}"
if [ "$MODE" = "cuda" ]; then
  echo "gpu-check: CUDA machine: gpu-marked tests + bench --image-size 224"
  BENCH_ARGS=(--image-size 224)
  BENCH_TIMEOUT=360
else
  MODE=rehearsal
  echo "gpu-check: REHEARSAL on the CPU (no CUDA here): the same steps at tiny sizes; no GPU figure comes from this run"
  BENCH_ARGS=(--image-size 32 --quick)
  BENCH_TIMEOUT=150
fi

# step NAME TIMEOUT CMD...: run, keep stdout+stderr in OUT/steps/NAME.log, record rc and seconds
step() {
  local name="$1" limit="$2"; shift 2
  local t0=$(date +%s)
  echo "--- $name: $*"
  timeout "$limit" "$@" > "$OUT/steps/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$OUT/steps/$name.log" | sed 's/^/    /'
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$OUT/steps/status"
}
skip() {  # skip NAME WHY
  echo "--- $1: skipped: $2"
  echo "$2" > "$OUT/steps/$1.log"
  echo "$1 skipped 0" >> "$OUT/steps/status"
}
: > "$OUT/steps/status"

# 1. What is installed (what will be skipped for want of it: nothing is installed here), and
#    the bench and the training path import with ray/optuna/wandb/captum blocked (one process).
step environment 120 "$PY" - <<'PY'
import importlib.util, platform, sys
missing = {}
for m, needs in (("ray", "sweeps and the bench's ray section"), ("optuna", "sweeps (TPE)"),
                 ("wandb", "the W&B mirror"), ("captum", "explain (guided backprop)"),
                 ("pytest", "the gpu-marked tests"), ("triton", "torch.compile on CUDA")):
    ok = importlib.util.find_spec(m) is not None
    print(f"{m:7s} {'present' if ok else 'MISSING: skipped: ' + needs}")
for m in ("ray", "optuna", "wandb", "captum"):
    sys.modules[m] = None  # any import of them now raises ImportError
import torch
import inat_tune.bench, inat_tune.bench.throughput, inat_tune.train, inat_tune.cli  # noqa: E401,F401
print("inat_tune.bench, inat_tune.train and inat_tune.cli import with ray/optuna/wandb/captum blocked")
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    d = torch.cuda.current_device()
    print("device", torch.cuda.get_device_name(d), "capability", torch.cuda.get_device_capability(d))
    from inat_tune.train import choose_precision
    print("precision auto ->", choose_precision("auto", torch.device("cuda", d)))
    from inat_tune.bench.environment import peak_info
    print("peak", peak_info(torch.cuda.get_device_name(d)) or "unknown GPU: no cited peak")
PY

# 2. The gpu-marked tests (on the CPU they are collected and skipped: the rehearsal checks that).
if "$PY" -c "import pytest" 2>/dev/null; then
  step gpu_tests 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_bench.py
else
  skip gpu_tests "pytest is not installed for $PY (nothing is installed by this script)"
fi

# 3. The bench (its ray section says 'skipped' where Ray is missing).
if [ "$MODE" = "cuda" ]; then
  step bench "$BENCH_TIMEOUT" "$PY" -m inat_tune.cli bench "${BENCH_ARGS[@]}" --json "$OUT/bench.json"
else  # rehearsal: Ray blocked (its section then says skipped, as on a GPU box without Ray)
  step bench "$BENCH_TIMEOUT" "$PY" -c 'import sys; sys.modules["ray"] = None
from inat_tune.cli import main; sys.exit(main(sys.argv[1:]))' bench "${BENCH_ARGS[@]}" --json "$OUT/bench.json"
fi
# 3b. Sharing one device: 4 trainings of the CNN at 64 px, batch 64, at once vs one alone (no Ray).
if [ "$MODE" = "cuda" ]; then
  step bench_concurrent 150 "$PY" -m inat_tune.cli bench --concurrent 4 --image-size 64 --json "$OUT/concurrent.json"
else
  step bench_concurrent 150 "$PY" -m inat_tune.cli bench --concurrent 2 --image-size 32 --quick --json "$OUT/concurrent.json"
fi

# 4. One JSON and a short table.
"$PY" - "$OUT" "$MODE" "$(( $(date +%s) - T_START ))" <<'PY'
import json, sys
from pathlib import Path
out, mode, total = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
steps = []
for line in (out / "steps" / "status").read_text().splitlines():
    name, rc, secs = line.split()
    log = (out / "steps" / f"{name}.log").read_text(errors="replace")
    steps.append({"name": name, "status": "skipped" if rc == "skipped" else ("ok" if rc == "0" else f"FAILED rc={rc}"),
                  "seconds": int(secs), "log_tail": log[-3000:]})
bench = None
if (out / "bench.json").is_file():
    bench = json.loads((out / "bench.json").read_text())
res = {"mode": mode, "rehearsal": mode != "cuda", "total_s": total, "steps": steps, "bench": bench}
(out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
lines = [f"gpu-check ({'REHEARSAL on CPU, tiny sizes: not GPU figures' if mode != 'cuda' else 'CUDA'}), {total} s"]
lines += [f"  {s['name']:26s} {s['status']:14s} {s['seconds']:4d} s" for s in steps]
for s in steps:
    if s["status"] == "skipped":
        lines.append(f"  skipped {s['name']}: {s['log_tail'].strip()}")
if bench:
    m = bench.get("machine", {})
    lines.append(f"  device {m.get('device_name')}, torch {m.get('torch')}, peak: {m.get('peak_source') or '-'}")
    for v in bench.get("train", {}).get("variants", []):
        lines.append(f"  train {v['name']:28s} " + (f"FAILED {v['error']}" if "error" in v else
                     f"{v['images_per_s']:,.0f} img/s, peak fraction {v.get('peak_fraction')}"))
    c = bench.get("cached", {})
    if c:
        lines.append(f"  cached loader {c.get('images_per_s', 0):,.0f} img/s, {c.get('speedup_over_naive') or 0:.1f}x naive")
if (out / "concurrent.json").is_file():
    cr = json.loads((out / "concurrent.json").read_text()).get("concurrent", {})
    res["concurrent"] = cr
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    lines.append(f"  concurrent: {json.dumps({k: v for k, v in cr.items() if not isinstance(v, (list, dict))})[:400]}")
lines.append(f"  wrote {out / 'gpu_check.json'}")
text = "\n".join(lines)
(out / "gpu_check.txt").write_text(text + "\n")
print("\n" + text)
sys.exit(1 if any(s["status"].startswith("FAILED") for s in steps) else 0)
PY
