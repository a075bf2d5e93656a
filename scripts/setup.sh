#!/usr/bin/env bash
# One idempotent set-up for mole: installs what is missing (Debian packages, a project virtualenv .venv with
# LibTorch from the torch wheel and the reference-test packages), configures and builds into build/.
#
#   bash scripts/setup.sh            set up and build
#   bash scripts/setup.sh --test     ... then run the whole test suite (ctest)
#   bash scripts/setup.sh --demo     ... then run the main job
#   bash scripts/setup.sh --cuda     use a CUDA build of torch and build the CUDA path (also: MOLE_CUDA=1)
#
# Environment: MOLE_CUDA=1 (as --cuda), MOLE_JOBS (build parallelism, default: all cores),
# MOLE_BUILD_TYPE (default Release).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

run_tests=0 run_demo=0 cuda=${MOLE_CUDA:-0}
for arg in "$@"; do
  case "$arg" in
    --test) run_tests=1 ;;
    --demo) run_demo=1 ;;
    --cuda) cuda=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
step() { printf '\n== %s\n' "$*"; }

# ---- Debian packages -------------------------------------------------------------------------------------
# libgloo-dev: the gloo headers that torch's c10d headers include (the wheel exports ProcessGroupGloo, ships no gloo/).
# libpcre2-dev, libutf8proc-dev: tokenizer.json's pre-tokenizer regexes and NFC normalizer (language/bpe_tokenizer.cpp).
debs=(build-essential pkg-config libopencv-dev libsentencepiece-dev nlohmann-json3-dev catch2 ninja-build ccache
      libgloo-dev libpcre2-dev libutf8proc-dev)
# cmake and venv may come from elsewhere (pip, pyenv): ask apt for them only when absent.
command -v cmake >/dev/null || debs+=(cmake)
python3 -c 'import venv, ensurepip' 2>/dev/null || debs+=(python3-venv)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- Python virtualenv: LibTorch comes from the torch wheel -----------------------------------------------
py=.venv/bin/python
if [ ! -x "$py" ]; then
  step "creating .venv"
  if [ "$cuda" = 1 ]; then python3 -m venv --system-site-packages .venv; else python3 -m venv .venv; fi
fi
if [ "$cuda" = 1 ]; then
  # A CUDA build of torch: the one already importable (e.g. the machine's), else the default wheel from PyPI.
  if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
    step "installing a CUDA build of torch"
    "$py" -m pip install -q torch
  fi
else
  if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    step "installing torch==2.13.0 (CPU) into .venv"
    "$py" -m pip install -q torch==2.13.0
  fi
fi
# Reference tests compare mole against transformers and peft themselves.
# (sentencepiece and protobuf: transformers 5 converts a tokenizer.model with them; tokenizers, which transformers
# brings, is the oracle for tokenizer.json ids, pinned because its pre-tokenizer behaviour is what is compared.)
if ! "$py" -c 'import transformers, safetensors, numpy, peft, PIL, sentencepiece, google.protobuf, tokenizers' 2>/dev/null; then
  step "installing transformers, peft, safetensors, numpy, pillow, sentencepiece, protobuf, tokenizers into .venv"
  "$py" -m pip install -q transformers==5.23.0 peft==0.21.2 safetensors==0.8.0 numpy==2.4.6 pillow==13.0.0 \
    sentencepiece==0.2.3 protobuf==7.36.2 tokenizers==0.23.3
fi

# ---- Configure and build -----------------------------------------------------------------------------------
jobs=${MOLE_JOBS:-$(nproc)}
cuda_flag=OFF; [ "$cuda" = 1 ] && cuda_flag=ON
step "configuring build/ (CUDA path: $cuda_flag)"
mkdir -p build
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${MOLE_BUILD_TYPE:-Release}" -DMOLE_CUDA=$cuda_flag \
      -DMOLE_PYTHON="$root/$py" >build/cmake.log 2>&1 || { cat build/cmake.log; exit 1; }
grep '^-- mole:' build/cmake.log || true
step "building with $jobs jobs"
cmake --build build -j "$jobs"

if [ "$run_tests" = 1 ]; then
  step "running the test suite"
  ctest --test-dir build --output-on-failure -j "$jobs"
fi
if [ "$run_demo" = 1 ]; then
  step "main job: mole demo (data, tokenizer, pretrain, align, LoRA vs MoLE, eval, routes, report)"
  ./build/mole demo --out demo_out
fi
