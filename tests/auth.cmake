# Issue 17: authentication and limits.
#   e2e_auth   recall keygen (files, modes, round trip, no overwrite); a 0644 secret key and
#              a non-loopback --listen without CURVE refused; recalld with CURVE: a listed
#              key works, an unlisted key and no key are refused and counted (Stats,
#              /metrics), the HTTP gateway works under CURVE; every per-client limit and
#              request limit refuses with its flag named and changes nothing; quotas hold
#              across a restart.
if(TARGET recalld AND TARGET recall)
  add_test(NAME e2e_auth COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/e2e_auth.py)
  set_tests_properties(e2e_auth PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 300 LABELS "daemon;auth" SKIP_RETURN_CODE 77)
endif()

# Key files without a daemon: keygen round trip, the forms a file may take, refusals.
recall_add_test(test_keys SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_keys.c
                LIBS recall_client LABELS auth TIMEOUT 60)
