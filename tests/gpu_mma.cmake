# The tensor-core attention kernel (kernels/cuda/attention_mma.cu) against cpu_attention,
# label "gpu": with no GPU it prints "skipped: no GPU" and exits 77 (ctest: skipped).
if(RECALL_HAVE_CUDA AND TARGET recall_cuda)
  recall_add_test(test_cuda_attention_mma
                  SOURCES test_cuda_attention_mma.c
                  LIBS recall_cuda recall_kernels recall_common
                  LABELS gpu
                  TIMEOUT 300)
endif()
