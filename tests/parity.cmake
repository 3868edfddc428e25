# Reference parity: recall's forward pass against an independent PyTorch implementation
# of LongLLaMA (tests/ref/longllama_ref.py). recall_score is recall's side of the
# comparison; tests/ref/parity.py runs both and compares log-probs and greedy tokens.
add_executable(recall_score ${CMAKE_CURRENT_SOURCE_DIR}/recall_score.c)
target_link_libraries(recall_score PRIVATE recall_model)

# The reference checks itself (windowed vs direct, grouping, determinism); no recall needed.
# The others compare recall with it on the tiny checkpoints.
foreach(t ref_selfcheck parity_llama parity_fot parity_fot_bf16 parity_fot_window32
          parity_variants memory_matters parity_knn)
  add_test(NAME ${t}
           COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/ref/parity.py
                   --test ${t} --data ${RECALL_TEST_DATA}
                   --recall-score $<TARGET_FILE:recall_score>
                   --corpus ${CMAKE_CURRENT_SOURCE_DIR}/data/corpus.txt)
  set_tests_properties(${t} PROPERTIES FIXTURES_REQUIRED tiny_models LABELS parity
                       TIMEOUT 120 SKIP_RETURN_CODE 77)
endforeach()
