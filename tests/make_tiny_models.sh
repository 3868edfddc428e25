#!/usr/bin/env bash
# Writes the tiny checkpoints the tests share into $1 (idempotent: a model whose files
# are all there is kept). Every model is random, seeded, and made by tools/make_test_model.py.
#   tiny-llama   plain LLaMA (no memory layers), fp32
#   tiny-fot     LongLLaMA with memory layers [1, 2], window 64, fp32 memory
#   tiny-fot-bf16  the same weights as tiny-fot stored as bf16, bf16 memory
#   tiny-clex    plain LLaMA with CLEX (max_factor 8, param_factor 2, silu, log_scale), L 64
#   tiny-clex-fot  LongLLaMA with CLEX (max_factor 8, param_factor 1, tanh, no log_scale)
set -euo pipefail
out=$1
py=${PYTHON:-/usr/bin/python3}
src=$(cd "$(dirname "$0")/.." && pwd)
mk() {
    local name=$1
    shift
    if [ -f "$out/$name/config.json" ] && [ -f "$out/$name/tokenizer.model" ]; then return; fi
    rm -rf "$out/$name.tmp"
    "$py" "$src/tools/make_test_model.py" --out "$out/$name.tmp" "$@"
    rm -rf "$out/$name"
    mv "$out/$name.tmp" "$out/$name"
}
mkdir -p "$out"
mk tiny-llama --kind llama --layers 2 --hidden 64 --heads 4 --ffn 176 --vocab 512 \
    --max-pos 128 --dtype float32 --seed 1
mk tiny-fot --kind longllama --layers 4 --hidden 64 --heads 4 --ffn 176 --vocab 512 \
    --max-pos 64 --mem-layers 1,2 --last-context 32 --mem-dtype float32 --dtype float32 --seed 2
mk tiny-fot-bf16 --kind longllama --layers 4 --hidden 64 --heads 4 --ffn 176 --vocab 512 \
    --max-pos 64 --mem-layers 1,2 --last-context 32 --mem-dtype bfloat16 --dtype bfloat16 --seed 2
# tiny-fot-bf16's layout at head_dim 64, the smallest the GPU attention takes (e2e_tiers_gpu)
mk tiny-fot-d64-bf16 --kind longllama --layers 4 --hidden 128 --heads 2 --ffn 352 --vocab 512 \
    --max-pos 64 --mem-layers 1,2 --last-context 32 --mem-dtype bfloat16 --dtype bfloat16 --seed 2
# CLEX (tests/ref/parity_clex.py): ODE weights large enough that the learned term moves
# the frequencies (the parity script checks it), inv_freq not rope_theta's.
mk tiny-clex --kind llama --layers 2 --hidden 64 --heads 4 --ffn 176 --vocab 512 \
    --max-pos 64 --dtype float32 --seed 5 --rope-theta 20000 --clex-max-factor 8 \
    --clex-param-factor 2 --clex-act silu --clex-time-dt 0.01 --log-scale true
mk tiny-clex-fot --kind longllama --layers 4 --hidden 64 --heads 4 --kv-heads 2 --ffn 176 \
    --vocab 512 --max-pos 64 --mem-layers 1,2 --last-context 32 --mem-dtype float32 \
    --dtype float32 --seed 6 --clex-max-factor 8 --clex-param-factor 1 --clex-act tanh \
    --clex-time-dt 0.02 --log-scale false
echo "tiny models ready in $out"
