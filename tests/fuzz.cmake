# Fuzzing (tests/fuzz/): libFuzzer targets, built only with -DRECALL_FUZZ=ON and clang
# (see tests/fuzz/CMakeLists.txt). The corpus generator and the black-box daemon fuzzer
# need no libFuzzer and are always built; the corpus is replayed in every build by
# tests/test_fuzz_corpus.c (registered in tests/hardening.cmake).
option(RECALL_FUZZ "Build the libFuzzer targets in tests/fuzz (needs clang)" OFF)
include(${CMAKE_CURRENT_LIST_DIR}/fuzz/CMakeLists.txt)
