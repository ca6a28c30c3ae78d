// The tests' main. Catch2 v2 exits with the number of failed assertions
// (capped at 255), and meson reads exit status 77 as "skipped": 77 failures
// would be reported as a skip, not a failure. Here any failure is exit 1, and
// a binary never exits 77: a test that cannot run declares it with
// test_support::declare_skip (a "COURING-SKIP: reason" line that
// scripts/dev's run_tests lists), and the rest of the binary still counts.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

int main(int argc, char* argv[]) {
  const int failed = Catch::Session().run(argc, argv);
  return failed == 0 ? 0 : 1;
}
