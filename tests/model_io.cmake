# Checkpoint loading, config parsing, dtypes and the tokenizer (model/config.c,
# model/safetensors.c, model/model.c, model/tokenizer.cc, tools/make_test_model.py).
recall_add_test(test_dtype SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_dtype.c LIBS recall_common)
recall_add_test(test_config SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_config.c
                LIBS recall_model)
recall_add_test(test_tokenizer SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_tokenizer.c
                LIBS recall_model FIXTURES tiny_models TIMEOUT 120)
recall_add_test(test_loader SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_loader.c
                LIBS recall_model FIXTURES tiny_models TIMEOUT 120)
# Real widths (LongLLaMA-3B, Code-7B, Llama-2-7B) at 2 layers, bf16: about 1 GB of disk and
# 3 GB of memory at a time, a minute or two on a small machine.
add_test(NAME test_loader_real COMMAND test_loader --real)
set_tests_properties(test_loader_real PROPERTIES FIXTURES_REQUIRED tiny_models LABELS slow
                     TIMEOUT 900 RUN_SERIAL TRUE
                     ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_SOURCE_DIR=${CMAKE_SOURCE_DIR};RECALL_PYTHON=${SYSTEM_PYTHON3}")
