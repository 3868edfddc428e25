# Daemon tests: the LMDB layer, and recalld end to end over raw ZeroMQ + protobuf.
add_library(recall_rpc_test_util STATIC ${CMAKE_CURRENT_LIST_DIR}/rpc_test_util.c)
target_link_libraries(recall_rpc_test_util PUBLIC recall_proto PkgConfig::ZMQ)
target_compile_definitions(recall_rpc_test_util PRIVATE RECALLD_PATH="$<TARGET_FILE:recalld>")

recall_add_test(test_db SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_db.c
                LIBS recall_memory recall_rpc_test_util LABELS daemon TIMEOUT 120)

foreach(t test_daemon test_daemon_badinput)
  recall_add_test(${t} SOURCES ${CMAKE_CURRENT_LIST_DIR}/${t}.c
                  LIBS recall_rpc_test_util recall_model recall_proto recall_common
                  FIXTURES tiny_models LABELS daemon TIMEOUT 600)
  add_dependencies(${t} recalld)
endforeach()

# Issue 3: ingest A, restart (SIGTERM and kill -9), ingest B == A then B in one lifetime.
recall_add_test(test_continuation SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_continuation.c
                LIBS recall_rpc_test_util recall_proto recall_common
                FIXTURES tiny_models LABELS daemon TIMEOUT 300)
add_dependencies(test_continuation recalld)

# Positional options from the wire to the stream, and across a restart.
recall_add_test(test_daemon_positional SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_daemon_positional.c
                LIBS recall_rpc_test_util recall_model recall_proto recall_common
                FIXTURES tiny_models LABELS daemon TIMEOUT 300)
add_dependencies(test_daemon_positional recalld)

# Plain LLaMA sessions: the whole session is the local context, refused past one window.
recall_add_test(test_daemon_plain SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_daemon_plain.c
                LIBS recall_rpc_test_util recall_model recall_proto recall_common
                FIXTURES tiny_models LABELS daemon TIMEOUT 300)
add_dependencies(test_daemon_plain recalld)

# The embedded default model: recalld needs no --model.
add_test(NAME test_default_model
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_default_model.sh $<TARGET_FILE:recalld>
                 $<TARGET_FILE:recall>)
set_tests_properties(test_default_model PROPERTIES LABELS daemon TIMEOUT 120)
