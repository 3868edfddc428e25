# Chat templates and stop strings (issue 18 point 5; daemon/chat.h).
#   test_chat      each formatter against exact strings derived from its template, the
#                  parts tokenized separately, template recognition and loading, stop-string
#                  scanning, the Ask checks
#   chat_ref       the same formatters against jinja2 rendering Llama-2-chat's real template,
#                  and a Python transcription of LongLLaMA-Instruct's demo, on more chats
#                  (skipped, not passed, without python3-jinja2)
recall_add_test(test_chat SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_chat.c
                LIBS recall_chat TIMEOUT 60)
add_test(NAME chat_ref COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/chat_ref.py
                               $<TARGET_FILE:test_chat>)
set_tests_properties(chat_ref PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60)
#   e2e_chat       recalld with a tokenizer_config.json the test writes: /v1/chat/completions
#                  (curl) and `recall ask --chat` agree on prompt tokens
#                  and answer for llama2 and longllama-instruct, an unknown template falls
#                  back with a warning; stop strings end generation in the daemon (CLI
#                  --stop, HTTP stop, streamed, --append)
if(TARGET recalld)
  add_test(NAME e2e_chat COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/e2e_chat.py)
  set_tests_properties(e2e_chat PROPERTIES
    ENVIRONMENT "RECALL_TEST_DATA=${RECALL_TEST_DATA};RECALL_BUILD_DIR=${CMAKE_BINARY_DIR};RECALL_BIN=$<TARGET_FILE:recall>;RECALLD_BIN=$<TARGET_FILE:recalld>"
    FIXTURES_REQUIRED tiny_models TIMEOUT 600 LABELS "daemon" SKIP_RETURN_CODE 77)
endif()
