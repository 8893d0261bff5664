#!/usr/bin/env bash
# Quickstart on the built-in synthetic data set (SYNTH, generated into data/SYNTH on first use):
# install (python -m pip install -e .: the package megraphau and its dependencies), train stage 1
# (ANFL), train stage 2 (MEFL) from stage 1's best.pth, test, print the table.
# ResNet-18 without ImageNet weights on the CPU: a few minutes on 2 cores.
# SYNTH's images are the same on every machine; the trained numbers are not (the CPU's float
# kernels differ): README gives the table for --seed 0, docs/data.md the range measured over seeds.
# Extra arguments go to every command, e.g. `bash tool/quickstart.sh --device cuda`.
# `bash tool/quickstart.sh --opengraphau` runs OpenGraphAU's recipe instead (docs/opengraphau.md): the
# hybrid SYNTH set (41 AUs, data/SYNTH_OpenGraphAU), stage 1 with SAM, validation every epoch, the
# best validation epoch tested on the test split (per-AU F1 and accuracy).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OPENGRAPHAU=0
if [[ "${1:-}" == "--opengraphau" ]]; then
  OPENGRAPHAU=1
  shift
fi

$PY -m pip install -q -e .

# --overwrite: running the quickstart again replaces its own earlier runs (a run folder holding an
# earlier run is otherwise refused)
COMMON=(--dataset SYNTH --fold 1 --arc resnet18 --device cpu --output-dir results --overwrite "$@")

run_dir() {  # the run folder a script writes for these arguments (results/{exp}/bs_..._lr_...)
  $PY - "$@" <<'PYEOF'
import sys, conf, train_stage1, train_stage2
script, section = {"stage1": (train_stage1, "stage1"), "stage2": (train_stage2, "stage2")}[sys.argv[1]]
print(conf.run_dir(conf.parse_args(script.get_args_parser(), sys.argv[2:], section=section)))
PYEOF
}

if [[ $OPENGRAPHAU == 1 ]]; then
  OG=(--dataset SYNTH_OpenGraphAU --device cpu --output-dir results --overwrite "$@")  # hybrid: no --fold
  echo "== OpenGraphAU recipe on hybrid SYNTH: stage 1 (SAM), best validation epoch =="
  $PY train_stage1.py "${OG[@]}" --exp-name ogau_synth_stage1 --pretrained none
  S1=$(run_dir stage1 "${OG[@]}" --exp-name ogau_synth_stage1)
  echo "== test: $S1/best.pth on the test split =="
  $PY test.py "${OG[@]}" --exp-name ogau_synth_test --resume "$S1/best.pth" --no-progress
  echo "Curves: $S1/curves.png; results: results/ogau_synth_test/*/results.json"
  exit 0
fi

echo "== stage 1: backbone + ANFL =="
$PY train_stage1.py "${COMMON[@]}" --exp-name synth_stage1 --pretrained none
S1=$(run_dir stage1 "${COMMON[@]}" --exp-name synth_stage1)

echo "== stage 2: MEFL, initialised from $S1/best.pth =="
$PY train_stage2.py "${COMMON[@]}" --exp-name synth_stage2 --resume "$S1/best.pth"
S2=$(run_dir stage2 "${COMMON[@]}" --exp-name synth_stage2 --resume "$S1/best.pth")

echo "== test: $S2/best.pth on the test fold =="
$PY test.py "${COMMON[@]}" --exp-name synth_test --resume "$S2/best.pth" --no-progress
echo "Curves: $S1/curves.png and $S2/curves.png; results: results/synth_test/*/results.json"
