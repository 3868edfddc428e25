# kill -9 soak (issue 17, point 4): recalld killed with SIGKILL at random moments and at
# every named crash point (common/crash.h) while clients ingest into several sessions, ask,
# drop and re-create them under a small host-memory budget; after each restart everything
# acknowledged is there bit for bit and every session answers (tests/e2e_soak.py).
# CI size: 20 kills, about 80 s on 2 cores (8 kills under AddressSanitizer, where the
# daemon is slower). Not labelled "slow": .ci/run's sanitizer pass runs it too. The long
# run (>= 500 kills) is bench/soak.sh.
if(TARGET recalld)
  add_test(NAME e2e_soak COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_soak.py)
  set_tests_properties(e2e_soak PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 LABELS "daemon;hardening;soak")
endif()
