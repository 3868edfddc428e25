# A real full disk (issue 17, point 4): recalld's data on an 8 MiB tmpfs filled by a filler
# file; ingest fails cleanly, nothing half-written, and goes on once space returns
# (tests/e2e_diskfull.py). Mounting needs root or a user namespace; without either the
# test is skipped (77) and says so. test_faults covers injected write failures.
if(TARGET recalld)
  add_test(NAME e2e_diskfull COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_diskfull.py)
  set_tests_properties(e2e_diskfull PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 300 LABELS "daemon;hardening" SKIP_RETURN_CODE 77)
endif()
