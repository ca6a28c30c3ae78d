// Not a test of couring: a binary that must fail, run by runner_selftest.sh.
// Catch2 v2 exits with the number of failed assertions, and 77 is what meson
// reads as "skipped"; catch_main.cpp must turn these 77 failures into exit 1.

#include <catch2/catch.hpp>

TEST_CASE("77 failed assertions") {
  for (int i = 0; i < 77; ++i)
    CHECK(i < 0);
}
