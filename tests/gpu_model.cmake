# The CUDA model backend (model/backend_cuda.c), label "gpu": built whenever recall_cuda is,
# so CI compiles it; with no GPU the test prints "skipped: no GPU" and exits 77.
#   test_cuda_model  the CUDA backend against the CPU backend on the tiny checkpoints (and a
#                    2-layer LongLLaMA-3B-width model when RECALL_TEST_3B names one)
#   bench_gpu        the model benchmarks (prefill, decode, 64k ingest with memory), run by
#                    bench/gpu_model.sh on a GPU host beside bench/hf_baseline.py; built here
#                    because bench/CMakeLists.txt belongs to another area
if(TARGET recall_cuda)
  recall_add_test(test_cuda_model
                  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_cuda_model.c
                          ${CMAKE_SOURCE_DIR}/bench/knn_probe.c
                  LIBS recall_model recall_cuda recall_common
                  FIXTURES tiny_models
                  LABELS gpu
                  TIMEOUT 600)
  add_executable(bench_gpu ${CMAKE_SOURCE_DIR}/bench/bench_gpu.c)
  target_link_libraries(bench_gpu PRIVATE recall_model recall_cuda recall_common)
endif()
