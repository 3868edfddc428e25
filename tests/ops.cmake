# Operations (issue 18 point 4): the config file and --check-config, sd_notify readiness and
# the systemd unit.
#   e2e_config   recalld --config / the default file / --check-config, driven as a user
#                would: good files, every kind of bad line (exit 2, FILE:LINE), problems
#                --check-config must find (exit 1), and that it binds and creates nothing
if(TARGET recalld)
  add_test(NAME e2e_config COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/e2e_config.py)
  set_tests_properties(e2e_config PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 300 LABELS "daemon" SKIP_RETURN_CODE 77)
endif()
#   e2e_systemd  sd_notify: READY=1 (Health answers by then), STATUS lines, STOPPING=1, to
#                a socket the test owns (path and abstract); the unit's required options
#                and `systemd-analyze verify` (skipped, not counted, without it); the sample
#                packaging/recalld.conf passes --check-config
if(TARGET recalld)
  add_test(NAME e2e_systemd COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/e2e_systemd.py)
  set_tests_properties(e2e_systemd PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 300 LABELS "daemon" SKIP_RETURN_CODE 77)
endif()
