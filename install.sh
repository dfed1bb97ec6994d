#!/usr/bin/env bash
# Set up MedSegReasoning on a fresh Debian/Ubuntu machine (Python 3.10+):
#   - system tools from apt: dicom3tools (dciodvfy, the DICOM validator), orthanc + orthanc-dicomweb (a real PACS
#     the tests start on loopback with their own storage; the system service the package starts is disabled),
#     gcc (the tests build a tiny shim that keeps that Orthanc on 127.0.0.1), g++ (llama-cpp-python, a test
#     dependency, compiles llama.cpp on install), nginx-light + openssl (the tests
#     run docs/deployment.md's TLS reverse-proxy config in front of two backend replicas);
#   - a virtual environment in .venv with the engine, its CLI (.venv/bin/medseg-reasoning) and the test tools;
#     torch's CPU build on Linux without an NVIDIA GPU where PyTorch's CPU index answers ($MEDSEG_TORCH_INDEX
#     names another index, or "pypi"); the disk it will take is printed first.
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
APT_PACKAGES="dicom3tools orthanc orthanc-dicomweb gcc g++ nginx-light openssl"

install_apt_packages() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: no apt-get here; install these yourself for the full test suite: $APT_PACKAGES" >&2
    return
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "install.sh: not root and no sudo; install these yourself for the full test suite: $APT_PACKAGES" >&2
      return
    fi
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
  # Debian's orthanc and nginx packages start system-wide services on all addresses; the tests run their own
  # on loopback, with their own configuration.
  for service in orthanc nginx; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
      $sudo service "$service" stop >/dev/null 2>&1 || true
    fi
  done
}

# Where torch comes from (MedSegReasoning/slicer/torch_index.py, the rule the Slicer installer follows too): on Linux
# without an NVIDIA GPU, PyTorch's CPU wheel index when it answers a short probe (about 4.4 GB instead of 9.2 GB),
# else PyPI, saying why. Sets TORCH_INDEX (empty: PyPI) and prints the choice and the disk it will take.
choose_torch_index() {
  local choice
  choice=$("$PYTHON" MedSegReasoning/slicer/torch_index.py)
  TORCH_INDEX=$(printf '%s\n' "$choice" | sed -n 1p)
  echo "install.sh: $(printf '%s\n' "$choice" | sed -n 2p)"
}

main() {
  choose_torch_index
  install_apt_packages
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch and torchvision must be a matching pair (the Qwen-VL processors and LiteMedSAM's TinyViT need both).
  if [ -n "$TORCH_INDEX" ] && ! .venv/bin/python -m pip install -q --index-url "$TORCH_INDEX" "torch==2.14.1" "torchvision==0.29.1"; then
    echo "install.sh: installing torch from $TORCH_INDEX failed: falling back to PyPI's build" >&2
    TORCH_INDEX=""
  fi
  [ -n "$TORCH_INDEX" ] || .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  # llama-cpp-python (test extra: a real OpenAI-compatible server for the tests) compiles on install: CPU-only,
  # portable (no -march=native, no BLAS or OpenMP), without llama.cpp's own tests and examples: about 3.5 min on 2 cores.
  CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"} \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)} \
    .venv/bin/python -m pip install -q -e ".[test,sample]"
  echo "install.sh: ready: .venv/bin/medseg-reasoning --help"
}

# Sourced (the tests do, to call choose_torch_index), it only defines the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
