# Every GPU test, label "gpu", behind one CUDA guard: built whenever recall_cuda is, so CI
# compiles them; with no GPU each prints "skipped: no GPU" and exits 77, which ctest reports
# as skipped (never as passed). scripts/gpu_ctest.sh runs them on a GPU host.
#
# Shared frames:
#   recall_gpu_ops   the op test harness (gpu_ops.h): device buffers, NaN-poisoned outputs,
#                    the normalized error against the CPU reference, tolerances, the skip
#   recall_gpu_pair  a checkpoint on the CPU and CUDA backends side by side (gpu_pair.h)
# Kernels against kernels/cpu.h:
#   test_cuda_kernels        every elementwise op, GEMM and attention (kernels/cuda/*.cu)
#   test_cuda_attention_mma  the tensor-core attention (attention_mma.cu)
#   test_cuda_knn_attention  kNN memory attention and the log-sum-exp output of both
#                            attention kernels; RECALL_KNN_BENCH=1 adds prefill timings
#   test_cuda_topk           exact top-k for kNN memory (topk*.cu)
# The CUDA backend against the CPU backend:
#   test_cuda_positional     Self-Extend, DCA and YaRN (kernel layouts and whole models at
#                            windows 4x the trained length)
#   test_cuda_model          the tiny checkpoints (and a 2-layer LongLLaMA-3B-width model
#                            when RECALL_TEST_3B names one): exact and knn memory, the
#                            spilled tier, rewinds, decode graphs, the knn probe
#   test_golden_cuda         tests/golden.cmake's pins on CUDA
# Benchmarks built here, run by hand (bench/README.md): bench_cuda_positional,
# bench_cuda_topk, bench_gpu (bench/gpu_model.sh).
if(TARGET recall_cuda)
  add_library(recall_gpu_ops STATIC ${CMAKE_CURRENT_LIST_DIR}/gpu_ops.c)
  target_link_libraries(recall_gpu_ops PUBLIC recall_cuda recall_common)
  add_library(recall_gpu_pair STATIC ${CMAKE_CURRENT_LIST_DIR}/gpu_pair.c)
  target_link_libraries(recall_gpu_pair PUBLIC recall_model recall_common)

  recall_add_test(test_cuda_kernels SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cuda_kernels.c
                  LIBS recall_gpu_ops recall_kernels LABELS gpu TIMEOUT 300)
  recall_add_test(test_cuda_attention_mma
                  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cuda_attention_mma.c
                  LIBS recall_gpu_ops recall_kernels LABELS gpu TIMEOUT 300)
  recall_add_test(test_cuda_knn_attention
                  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cuda_knn_attention.c
                  LIBS recall_gpu_ops recall_kernels LABELS gpu TIMEOUT 300)
  recall_add_test(test_cuda_topk SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cuda_topk.c
                  LIBS recall_gpu_ops LABELS gpu TIMEOUT 300)
  recall_add_test(test_cuda_positional SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cuda_positional.c
                  LIBS recall_gpu_ops recall_gpu_pair recall_kernels LABELS gpu TIMEOUT 600)
  recall_add_test(test_cuda_model
                  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cuda_model.c
                          ${CMAKE_SOURCE_DIR}/bench/knn_probe.c
                  LIBS recall_gpu_pair recall_cuda recall_common
                  FIXTURES tiny_models LABELS gpu TIMEOUT 600)

  add_executable(bench_cuda_positional ${CMAKE_SOURCE_DIR}/bench/cuda_positional.c)
  target_link_libraries(bench_cuda_positional PRIVATE recall_cuda recall_common)
  add_executable(bench_cuda_topk ${CMAKE_SOURCE_DIR}/bench/cuda_topk.c)
  target_link_libraries(bench_cuda_topk PRIVATE recall_cuda recall_common)
  add_executable(bench_gpu ${CMAKE_SOURCE_DIR}/bench/bench_gpu.c)
  target_link_libraries(bench_gpu PRIVATE recall_model recall_cuda recall_common)
endif()
