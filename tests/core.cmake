# Unit tests of the lead's modules: CPU kernels, memory store, sampling.
recall_add_test(test_kernels_cpu SOURCES test_kernels_cpu.c LIBS recall_kernels)
recall_add_test(test_store SOURCES test_store.c LIBS recall_memory)
recall_add_test(test_session_memory SOURCES test_session_memory.c LIBS recall_memory)
recall_add_test(test_sample SOURCES test_sample.c LIBS recall_model)
recall_add_test(test_common SOURCES test_common.c LIBS recall_common)
