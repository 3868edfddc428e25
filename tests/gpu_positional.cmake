# Self-Extend, DCA and YaRN on the GPU (issue 5's CUDA part), label "gpu": with no GPU the
# test prints "skipped: no GPU" and exits 77 (ctest: skipped).
#   test_cuda_positional   cuda_attention_fast's positional layouts against
#                          cpu_attention_ext, and the CUDA backend against the CPU backend
#                          with each scheme at windows 4x the trained length
#   bench_cuda_positional  attention throughput, 16k / 32k windows, plain causal vs
#                          Self-Extend vs DCA (bench/README.md); built here because
#                          bench/CMakeLists.txt belongs to another area
if(TARGET recall_cuda)
  recall_add_test(test_cuda_positional
                  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_cuda_positional.c
                  LIBS recall_model recall_cuda recall_kernels recall_common
                  LABELS gpu
                  TIMEOUT 600)
  add_executable(bench_cuda_positional ${CMAKE_SOURCE_DIR}/bench/cuda_positional.c)
  target_link_libraries(bench_cuda_positional PRIVATE recall_cuda recall_common)
endif()
