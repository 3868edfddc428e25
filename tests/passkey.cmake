# recall passkey (clients/passkey.c, clients/png.c).
#   test_passkey      the prompt against REFERENCE.md's template, filler and depth, keys,
#                     the pass rule, length parsing, fit and split with fake tokenizers,
#                     JSON, heatmap and PNG writer (no daemon)
#   test_passkey_rpc  the same binary against recalld on tiny-fot: the Tokenize RPC against
#                     the tokenizer, and the fit and split with the real tokenizer
#   e2e_passkey       `recall passkey` end to end on tiny-fot: table, --json shape, PNG,
#                     sessions dropped, usage errors
recall_add_test(test_passkey SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_passkey.c
                LIBS recall_passkey recall_model recall_rpc_test_util PkgConfig::CJSON TIMEOUT 120)
if(TARGET recalld)
  add_dependencies(test_passkey recalld)
  add_test(NAME test_passkey_rpc COMMAND test_passkey rpc)
  set_tests_properties(test_passkey_rpc PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR}"
    FIXTURES_REQUIRED tiny_models TIMEOUT 120 SKIP_RETURN_CODE 77)
  add_test(NAME e2e_passkey COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_passkey.py)
  set_tests_properties(e2e_passkey PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 SKIP_RETURN_CODE 77)
endif()
