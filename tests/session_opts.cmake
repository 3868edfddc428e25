# Issue 6: the kNN index options (nlist, nprobe) and the GPU memory budget as session
# options: recalld's start-up checks and defaults, RPC round-trip, persistence across a
# restart, refusals, and a knn session with explicit nlist/nprobe scored against the CPU
# stream.
recall_add_test(test_session_opts SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_session_opts.c
                LIBS recall_rpc_test_util recall_model recall_memory recall_proto recall_common
                FIXTURES tiny_models LABELS daemon TIMEOUT 300)
add_dependencies(test_session_opts recalld)

# The same through the recall CLI: parsing, info (text and --json), refusals, help texts.
add_test(NAME test_cli_session_opts
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_cli_session_opts.sh $<TARGET_FILE:recalld>
                 $<TARGET_FILE:recall> ${RECALL_TEST_DATA}/tiny-fot)
set_tests_properties(test_cli_session_opts PROPERTIES LABELS "cli;daemon" TIMEOUT 300
                     FIXTURES_REQUIRED tiny_models)
