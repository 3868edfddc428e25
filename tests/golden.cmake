# Golden continuations of the embedded model (models/default), tests/test_golden.c:
#   test_golden       three prompts continued greedily on the CPU, ids and text pinned
#   test_golden_cuda  the same pins on the CUDA backend (label gpu); with no GPU it prints
#                     "skipped: no GPU" and exits 77 (skipped, never passed)
recall_add_test(test_golden SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_golden.c
                LIBS recall_model recall_common TIMEOUT 300)
if(TARGET recall_cuda)
  add_test(NAME test_golden_cuda COMMAND test_golden cuda)
  set_tests_properties(test_golden_cuda PROPERTIES
    ENVIRONMENT "RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
    SKIP_RETURN_CODE 77 LABELS gpu TIMEOUT 300)
endif()
