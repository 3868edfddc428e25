# The HTTP gateway (daemon/http.h).
#   test_http   its pure helpers (request JSON -> Ask, chat template, stop strings, SSE,
#               metrics text) and a running gateway with no daemon (503, 401, 405, 404,
#               413, start-up refusals)
#   e2e_http    recalld --http end to end on tiny-fot, driven with curl and http.client:
#               completions (plain, streamed, chat), ingest, sessions, /metrics, errors
recall_add_test(test_http SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_http.c
                LIBS recall_http TIMEOUT 60)

if(TARGET recalld)
  add_test(NAME e2e_http COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/e2e_http.py)
  set_tests_properties(e2e_http PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 LABELS "daemon" SKIP_RETURN_CODE 77)
endif()
