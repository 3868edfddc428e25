# kNN memory on the GPU (issue 6), host side: where a GPU knn stream's memory splits between
# the device and the spilled tier, merging the two tiers' top-k lists, the gather slots of
# spilled rows (model/knn_tiers.c), and the options check of gpu_memory_budget. No GPU needed.
recall_add_test(test_knn_tiers SOURCES test_knn_tiers.c LIBS recall_model recall_common
                FIXTURES tiny_models TIMEOUT 60)
