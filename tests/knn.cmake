# kNN memory (issue 6, CPU side): the Faiss C API shim, the kNN index tier, kNN attention,
# and knn sessions end to end.
recall_add_test(test_faiss_c SOURCES test_faiss_c.c LIBS recall_memory TIMEOUT 120)
recall_add_test(test_knn SOURCES test_knn.c
                LIBS recall_model recall_memory recall_kernels recall_rpc_test_util recall_proto
                     recall_common
                FIXTURES tiny_models LABELS daemon TIMEOUT 300)
add_dependencies(test_knn recalld)
