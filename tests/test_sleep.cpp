#include <catch2/catch.hpp>

#include <chrono>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using couring::io_context;
using couring::task;
using clock_type = std::chrono::steady_clock;

TEST_CASE("sleep_for waits at least the duration") {
  io_context ctx;
  auto body = [&]() -> task<clock_type::duration> {
    const auto t0 = clock_type::now();
    auto r = co_await couring::sleep_for(ctx, 30ms);
    REQUIRE(r);
    co_return clock_type::now() - t0;
  };
  const auto took = ctx.run(body());
  CHECK(took >= 30ms);
  CHECK(took < 30ms + test_support::scaled(5s)); // it fired (a busy machine is late)
}

TEST_CASE("sleep_until on steady_clock and system_clock") {
  io_context ctx;
  auto body = [&]() -> task<void> {
    const auto t0 = clock_type::now();
    auto r1 = co_await couring::sleep_until(ctx, t0 + 20ms);
    REQUIRE(r1);
    CHECK(clock_type::now() >= t0 + 20ms);
    const auto s0 = std::chrono::system_clock::now();
    auto r2 = co_await couring::sleep_until(ctx, s0 + 20ms);
    REQUIRE(r2);
    CHECK(std::chrono::system_clock::now() >= s0 + 20ms);
    // A deadline in the past returns at once.
    auto r3 = co_await couring::sleep_until(ctx, t0 - 1s);
    REQUIRE(r3);
  };
  ctx.run(body());
}

TEST_CASE("a zero or negative sleep completes at once") {
  io_context ctx;
  auto body = [&]() -> task<bool> {
    auto a = co_await couring::sleep_for(ctx, 0ms);
    auto b = co_await couring::sleep_for(ctx, -5s);
    co_return a.has_value() && b.has_value();
  };
  CHECK(ctx.run(body()));
}

TEST_CASE("many timers run concurrently in one thread") {
  io_context ctx;
  int woke = 0;
  auto sleeper = [&](int ms) -> task<void> {
    auto r = co_await couring::sleep_for(ctx, std::chrono::milliseconds(ms));
    if (r)
      ++woke;
  };
  const auto t0 = clock_type::now();
  for (int i = 0; i < 500; ++i)
    ctx.spawn(sleeper(10 + i % 40));
  ctx.run();
  CHECK(woke == 500);
  // They overlapped: less than half of the 15 s they would take one after
  // another (not scaled: the point is the comparison with 15 s).
  CHECK(clock_type::now() - t0 < 7s);
}
