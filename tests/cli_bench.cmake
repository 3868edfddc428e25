# recall bench end to end on tiny-fot: the JSON report, the throwaway session dropped (or
# kept with --keep), usage errors creating nothing, knn options, daemon refusals.
add_test(NAME test_cli_bench
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_cli_bench.sh $<TARGET_FILE:recalld>
                 $<TARGET_FILE:recall> ${RECALL_TEST_DATA}/tiny-fot)
set_tests_properties(test_cli_bench PROPERTIES LABELS "cli;daemon" TIMEOUT 120
                     ENVIRONMENT "RECALL_PYTHON=${SYSTEM_PYTHON3}"
                     FIXTURES_REQUIRED tiny_models)
