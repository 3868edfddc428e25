# Exact top-k for kNN memory on the GPU (kernels/cuda/topk.cu), label "gpu": with no GPU the
# test prints "skipped: no GPU" and exits 77 (ctest: skipped). The benchmark beside it is
# run by hand (bench/topk_run.sh), never by ctest.
if(RECALL_HAVE_CUDA AND TARGET recall_cuda)
  recall_add_test(test_cuda_topk
                  SOURCES test_cuda_topk.c
                  LIBS recall_cuda recall_common
                  LABELS gpu
                  TIMEOUT 300)
  add_executable(bench_cuda_topk ${CMAKE_SOURCE_DIR}/bench/cuda_topk.c)
  target_link_libraries(bench_cuda_topk PRIVATE recall_cuda recall_common)
endif()
