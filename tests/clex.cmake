# CLEX (a learned continuous RoPE scaling that checkpoints are fine-tuned with;
# model/positional.h): recall's CPU backend against an independent PyTorch reference
# (tests/ref/clex_ref.py, with its own RK4), run by tests/ref/parity_clex.py on the tiny CLEX
# checkpoints (tests/make_tiny_models.sh) and copies with other configs. recall_score
# (recall's side) is defined in tests/parity.cmake.
#
#   clex_ref_selfcheck   the reference alone: RK4 convergence, the learned term and the
#                        stored inv_freq matter, grouping and log_scale change the results
#   clex_table           recall's frequency table vs the reference's (double, then float)
#   clex_parity          log-probs at 1x-8x L, chunked prefill, decode steps, FoT; 1e-4 rel.
#   clex_bad_input       configs, checkpoints and options recall must refuse, with messages
foreach(t ref_selfcheck table parity bad_input)
  add_test(NAME clex_${t}
           COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/ref/parity_clex.py
                   --test ${t} --data ${RECALL_TEST_DATA}
                   --recall-score $<TARGET_FILE:recall_score>
                   --corpus ${CMAKE_CURRENT_SOURCE_DIR}/data/corpus.txt)
  set_tests_properties(clex_${t} PROPERTIES FIXTURES_REQUIRED tiny_models
                       LABELS parity TIMEOUT 600 SKIP_RETURN_CODE 77)
endforeach()
