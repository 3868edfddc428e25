# recall CLI and client library tests.
#   test_client          client library against a fake daemon (ids, streams, errors, timeouts)
#   test_client_ingest   `recall ingest` against a fake daemon (credit, BUSY, resends), and the
#                        library's recall_ingest_tokens against the same daemon
#   test_client_chunker  ingest chunking at line and UTF-8 boundaries
#   test_cli_usage       the CLI without a daemon: help, usage errors, dead endpoints
#   e2e_cli              recalld + recall end to end on tiny-fot: ingest, ask, ppl, restart,
#                        kill -9 during ingest (needs the recalld target)
recall_add_test(test_client SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_client.c
                LIBS recall_client Threads::Threads PkgConfig::ZMQ TIMEOUT 60)
# runs the recall binary against a fake daemon: pipelining, credit, BUSY resends
recall_add_test(test_client_ingest SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_client_ingest.c
                LIBS recall_client Threads::Threads PkgConfig::ZMQ TIMEOUT 120)
add_dependencies(test_client_ingest recall)
recall_add_test(test_client_chunker SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_client_chunker.c
                LIBS recall_client TIMEOUT 60)

set(cli_test_env
    "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_PYTHON=${SYSTEM_PYTHON3};RECALL_BIN=$<TARGET_FILE:recall>")

add_test(NAME test_cli_usage COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_cli_usage.sh)
set_tests_properties(test_cli_usage PROPERTIES ENVIRONMENT "${cli_test_env}" TIMEOUT 120)

if(TARGET recalld)
  add_test(NAME e2e_cli COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_cli.py)
  set_tests_properties(e2e_cli PROPERTIES
    ENVIRONMENT "${cli_test_env};RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 SKIP_RETURN_CODE 77)
  # The memory tiers end to end: budgets, lazy open, damaged sessions, kill -9 (e2e_tiers.py).
  add_test(NAME e2e_tiers COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_tiers.py)
  set_tests_properties(e2e_tiers PROPERTIES
    ENVIRONMENT "${cli_test_env};RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 LABELS "daemon")
  # A checkpoint's own session defaults (config.json recall_session_defaults).
  add_test(NAME e2e_model_defaults
           COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_model_defaults.py)
  set_tests_properties(e2e_model_defaults PROPERTIES
    ENVIRONMENT "${cli_test_env};RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 300 LABELS "daemon")
  # The daemon-wide GPU budget on a GPU (e2e_tiers_gpu.py); without one: skipped (77).
  add_test(NAME e2e_tiers_gpu COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_tiers_gpu.py)
  set_tests_properties(e2e_tiers_gpu PROPERTIES
    ENVIRONMENT "${cli_test_env};RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 LABELS "daemon;gpu" SKIP_RETURN_CODE 77)
else()
  message(STATUS "recall: no recalld target yet; e2e_cli is not registered")
endif()
