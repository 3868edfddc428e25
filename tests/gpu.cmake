# GPU tests (label "gpu"): built whenever the CUDA backend is, so CI compiles them; with no
# GPU present they print "skipped: no GPU" and exit 77, which ctest reports as skipped.
if(RECALL_HAVE_CUDA AND TARGET recall_cuda)
  recall_add_test(test_cuda_kernels
                  SOURCES test_cuda_kernels.c
                  LIBS recall_cuda recall_kernels recall_common
                  LABELS gpu
                  TIMEOUT 300)

endif()
