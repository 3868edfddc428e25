# Positional-scheme parity: recall's CPU backend with Self-Extend, Dual Chunk Attention and
# the RoPE scalings against an independent PyTorch reference (tests/ref/positional_ref.py),
# run by tests/ref/parity_positional.py on the tiny checkpoints. recall_score (recall's
# side, the same command line) is defined in tests/parity.cmake.
#
#   positional_ref_selfcheck   the reference alone: reductions to plain RoPE, lse merge vs
#                              one masked softmax from per-pair positions, grouping, f64, CLI
#   positional_parity_*        recall vs the reference, max |Δ logprob| <= 1e-4
#   positional_bad_input       parameters the schemes cannot take are refused
foreach(t ref_selfcheck parity_rope parity_self_extend parity_dca parity_generate
          parity_rope_scaling bad_input)
  add_test(NAME positional_${t}
           COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/ref/parity_positional.py
                   --test ${t} --data ${RECALL_TEST_DATA}
                   --recall-score $<TARGET_FILE:recall_score>
                   --corpus ${CMAKE_CURRENT_SOURCE_DIR}/data/corpus.txt)
  set_tests_properties(positional_${t} PROPERTIES FIXTURES_REQUIRED tiny_models
                       LABELS parity TIMEOUT 300 SKIP_RETURN_CODE 77)
endforeach()
