# kNN memory attention on the GPU (kernels/cuda/knn_attention.cu) and the log-sum-exp output
# of both attention kernels, against the CPU reference; label "gpu": with no GPU it prints
# "skipped: no GPU" and exits 77 (ctest: skipped). RECALL_KNN_BENCH=1 adds prefill timings.
if(RECALL_HAVE_CUDA AND TARGET recall_cuda)
  recall_add_test(test_cuda_knn_attention
                  SOURCES test_cuda_knn_attention.c
                  LIBS recall_cuda recall_kernels recall_common
                  LABELS gpu
                  TIMEOUT 300)
endif()
