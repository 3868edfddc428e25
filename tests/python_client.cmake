# The Python client package (clients/python), installed offline into a temporary venv.
#   python_client_proto  the installed recall_pb2 is protoc's output for proto/recall.proto
#                        as it is now; the chunker cuts as the C client's
#   e2e_python_client    the package against a real recalld on tiny-fot, compared with the
#                        recall CLI (needs the recall and recalld targets)
set(py_client_env
    "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_PYTHON=${SYSTEM_PYTHON3}")
add_test(NAME python_client_proto
         COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_python_client.py --part proto)
set_tests_properties(python_client_proto PROPERTIES ENVIRONMENT "${py_client_env}" TIMEOUT 300)
if(TARGET recalld AND TARGET recall)
  add_test(NAME e2e_python_client
           COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_python_client.py --part e2e)
  set_tests_properties(e2e_python_client PROPERTIES
    ENVIRONMENT "${py_client_env};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 LABELS "daemon")
endif()
