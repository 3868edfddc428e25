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
