# recalld under load (tests/e2e_load.py, driven by the C client tests/load_driver.c):
#   e2e_load   health/stats latency while 8 clients ingest; 64 clients of mixed requests
#              (every acknowledged chunk still there, RSS bounded); a client that never
#              reads its replies beside one that does. About a minute on 2 cores.
add_executable(load_driver ${CMAKE_CURRENT_SOURCE_DIR}/load_driver.c)
target_link_libraries(load_driver PRIVATE recall_client Threads::Threads PkgConfig::ZMQ)
if(TARGET recalld)
  add_test(NAME e2e_load COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_load.py)
  set_tests_properties(e2e_load PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>;LOAD_DRIVER=$<TARGET_FILE:load_driver>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 300 LABELS "daemon")
endif()
