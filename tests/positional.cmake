# Positional schemes for local attention: Self-Extend, Dual Chunk Attention and the RoPE
# scalings (model/positional.c, cpu_attention_ext in kernels/cpu.c, model/backend_cpu.c).
# Unit tests of the position maps, frequencies and validation run without data; the model
# part (bit-identity where a scheme reduces to RoPE, grouping independence, memory use at
# 4x the trained length) uses the tiny checkpoints.
recall_add_test(test_positional SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_positional.c
                LIBS recall_model FIXTURES tiny_models LABELS positional TIMEOUT 300)
# Single-threaded: the answers do not depend on it, and the build machines are shared.
set_property(TEST test_positional APPEND PROPERTY ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
