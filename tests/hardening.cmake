# Robustness: the fuzz corpus replayed in process and against a live recalld, a short
# black-box fuzzing run, and fault injection (LMDB write failures). All run in the normal
# build and, through .ci/run, again under ASan + UBSan (label "hardening").
recall_add_test(test_fuzz_corpus SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_fuzz_corpus.c
                LIBS recall_fuzz_harness recall_rpc_test_util
                FIXTURES tiny_models LABELS "daemon;hardening" TIMEOUT 300)
add_dependencies(test_fuzz_corpus recalld)

recall_add_test(test_faults SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_faults.c
                LIBS recall_memory recall_rpc_test_util recall_proto recall_common
                FIXTURES tiny_models LABELS "daemon;hardening" TIMEOUT 300)
add_dependencies(test_faults recalld)

# A fixed-seed black-box run: a few hundred mutated frames, Health after every batch.
add_test(NAME fuzz_daemon_smoke
         COMMAND fuzz_daemon --model ${RECALL_TEST_DATA}/tiny-fot
                 --corpus ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus --iterations 5000 --batch 50
                 --seed 1 --crashes ${CMAKE_BINARY_DIR}/fuzz-daemon-crashes)
set_tests_properties(fuzz_daemon_smoke PROPERTIES FIXTURES_REQUIRED tiny_models
                     LABELS "daemon;hardening" TIMEOUT 300 SKIP_RETURN_CODE 77)
