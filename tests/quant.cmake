# Quantized memory rows, fp8 e4m3 and int8 (issue 14, common/quant.h).
#   test_quant     the codec (known encodings, bounds, non-finite inputs), file and anonymous
#                  stores of quantized rows, CPU exact / knn attention and the kNN index over
#                  them against the dequantized rows in f32 and against bf16 rows
#   quant_ref      the codec against tests/quant_ref.py's reference written from the e4m3fn
#                  and int8 definitions (exact rational arithmetic; every code, many values)
#   test_quant_stream  see below
#   e2e_quant      recalld: an fp8 session ingests, answers, restarts and answers the same;
#                  its row files are about half of bf16's; a dtype change is refused
recall_add_test(test_quant SOURCES test_quant.c
                LIBS recall_memory recall_kernels recall_common TIMEOUT 120)
add_executable(test_quant_tool test_quant_tool.c)
target_link_libraries(test_quant_tool PRIVATE recall_common)
add_test(NAME quant_ref COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/quant_ref.py
                                $<TARGET_FILE:test_quant_tool>)
set_tests_properties(quant_ref PROPERTIES TIMEOUT 120)
if(TARGET recalld)
  add_test(NAME e2e_quant COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_quant.py)
  set_tests_properties(e2e_quant PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 LABELS "daemon")
endif()
# test_quant_stream: whole streams on tiny-fot with fp8/int8 rows against f32 rows, and a
# non-CPU backend's refusal (model/stream.c).
recall_add_test(test_quant_stream SOURCES test_quant_stream.c
                LIBS recall_model recall_common FIXTURES tiny_models TIMEOUT 120)
