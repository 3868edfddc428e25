# gpu_env.sh — sourced by the scripts that run on the GPU host (bench/*.sh, scripts/gpu_run.sh).
#
#   gpu_libpath DIR      DIR (libraries bundled by scripts/gpu_bundle.sh) first on
#                        LD_LIBRARY_PATH, the CUDA toolkit's library folders last
#   gpu_find_libs BIN    folders of the libraries BIN's loader cannot find (a host with the
#                        CUDA runtime only inside Python's wheels, say), searched under /usr
#                        and /opt, added to LD_LIBRARY_PATH
# Both return 0, so they are safe under set -e.

gpu_libpath() {
    export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    local d
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    done
    return 0
}

gpu_find_libs() {
    local name f
    for name in $(ldd "$1" | awk '/not found/ { print $1 }'); do
        f=$(find /usr /opt -name "$name" 2>/dev/null | head -1)
        [ -n "$f" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$f")" &&
            echo "found $name at $f"
    done
    return 0
}
