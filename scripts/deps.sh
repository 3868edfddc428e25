#!/usr/bin/env bash
# Installs the Debian packages that recall builds, tests and runs with. Idempotent: packages
# already present are skipped, so a warm machine pays nothing.
set -euo pipefail
pkgs=(cmake make gcc g++ pkg-config
      libzmq3-dev libprotobuf-c-dev protobuf-c-compiler liblmdb-dev lmdb-utils
      libfaiss-dev libopenblas-dev libsentencepiece-dev sentencepiece libcjson-dev zlib1g-dev libxxhash-dev
      libmicrohttpd-dev curl
      python3 python3-numpy python3-torch python3-sentencepiece
      # the Python client (clients/python): its build backend, runtime and generated messages
      python3-setuptools python3-wheel python3-pip python3-venv python3-zmq python3-protobuf
      protobuf-compiler
      # tests only: the reference renderer of the checkpoints' Jinja chat templates
      # (tests/chat_ref.py), against which daemon/chat.c's formatters are checked
      python3-jinja2)
# `deps.sh fuzz` adds clang and its runtime libraries (libFuzzer is in libclang-rt): only
# the fuzzing step (.ci/run, scripts/fuzz_long.sh) needs them.
[ "${1:-}" = fuzz ] && pkgs+=(clang libclang-rt-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#pkgs[@]} packages present"
    exit 0
fi
echo "deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
