# GALI (training-free attention-logit interpolation; model/positional.h): recall's CPU
# backend against an independent PyTorch reference (tests/ref/gali_ref.py), run by
# tests/ref/parity_gali.py on tiny-llama and tiny-fot (tests/make_tiny_models.sh).
# recall_score (recall's side) is defined in tests/parity.cmake.
#
#   gali_ref_selfcheck   the reference alone: positions = the closed form, within L it is
#                        plain RoPE, interpolation, the bf16 coefficient and grouping matter
#   gali_parity          log-probs at 1x-8x L in both modes, chunked prefill, decode steps,
#                        other w and c, FoT memory; 1e-4 relative
#   gali_noise           --gali-noise: on past L only, deterministic per seed, 0 is off
#   gali_bad_input       options recall must refuse, naming the option and the range
foreach(t ref_selfcheck parity noise bad_input)
  add_test(NAME gali_${t}
           COMMAND ${SYSTEM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/ref/parity_gali.py
                   --test ${t} --data ${RECALL_TEST_DATA}
                   --recall-score $<TARGET_FILE:recall_score>
                   --corpus ${CMAKE_CURRENT_SOURCE_DIR}/data/corpus.txt)
  set_tests_properties(gali_${t} PROPERTIES FIXTURES_REQUIRED tiny_models
                       LABELS parity TIMEOUT 600 SKIP_RETURN_CODE 77)
endforeach()
