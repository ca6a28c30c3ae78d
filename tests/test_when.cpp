#include <catch2/catch.hpp>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using couring::io_context;
using couring::result;
using couring::task;
using clock_type = std::chrono::steady_clock;

namespace {

task<int> value_after(io_context& ctx, int v, std::chrono::milliseconds delay) {
  (void)co_await couring::sleep_for(ctx, delay);
  co_return v;
}

task<std::string> text_now(std::string s) {
  co_return s;
}

task<void> throw_after(io_context& ctx, std::chrono::milliseconds delay) {
  (void)co_await couring::sleep_for(ctx, delay);
  throw std::runtime_error("child failed");
}

// Sleeps; reports how the sleep ended and that the task ran to its end.
task<result<void>> watched_sleep(io_context& ctx, std::chrono::milliseconds d, bool& finished) {
  auto r = co_await couring::sleep_for(ctx, d);
  finished = true;
  co_return r;
}

} // namespace

TEST_CASE("when_all gives every result, running the tasks concurrently") {
  io_context ctx;
  auto body = [&]() -> task<void> {
    const auto t0 = clock_type::now();
    auto [a, b, c] = co_await couring::when_all(value_after(ctx, 1, 1s), value_after(ctx, 2, 1s),
                                                text_now("three"));
    const auto took = clock_type::now() - t0;
    CHECK(a == 1);
    CHECK(b == 2);
    CHECK(c == "three");
    CHECK(took >= 1s);
    // One after the other they would take 2 s; long sleeps leave a busy
    // machine a whole second of slack.
    CHECK(took < 2s);
  };
  ctx.run(body());
}

TEST_CASE("when_all with void tasks and the vector form") {
  io_context ctx;
  int ran = 0;
  auto v = [&](int ms) -> task<void> {
    (void)co_await couring::sleep_for(ctx, std::chrono::milliseconds(ms));
    ++ran;
  };
  auto body = [&]() -> task<void> {
    auto [x, y] = co_await couring::when_all(v(5), value_after(ctx, 9, 1ms));
    (void)x; // std::monostate
    CHECK(y == 9);

    std::vector<task<int>> many;
    for (int i = 0; i < 100; ++i)
      many.push_back(value_after(ctx, i, std::chrono::milliseconds(i % 10)));
    std::vector<int> got = co_await couring::when_all(std::move(many));
    REQUIRE(got.size() == 100);
    for (int i = 0; i < 100; ++i)
      CHECK(got[static_cast<std::size_t>(i)] == i);

    std::vector<task<void>> voids;
    for (int i = 0; i < 10; ++i)
      voids.push_back(v(i));
    co_await couring::when_all(std::move(voids));
    auto empty = co_await couring::when_all(std::vector<task<int>>{});
    CHECK(empty.empty());
  };
  ctx.run(body());
  CHECK(ran == 11);
}

TEST_CASE("when_all rethrows a child's exception after every child finished") {
  io_context ctx;
  bool slow_finished = false;
  auto body = [&]() -> task<std::string> {
    try {
      (void)co_await couring::when_all(throw_after(ctx, 1ms),
                                       watched_sleep(ctx, 50ms, slow_finished));
    } catch (const std::runtime_error& e) {
      co_return e.what();
    }
    co_return "no exception";
  };
  CHECK(ctx.run(body()) == "child failed");
  CHECK(slow_finished);
}

TEST_CASE("when_any returns the first, cancels the others, and waits for them") {
  io_context ctx;
  bool slow1 = false, slow2 = false;
  auto body = [&]() -> task<void> {
    const auto t0 = clock_type::now();
    auto r = co_await couring::when_any(watched_sleep(ctx, 60s, slow1), value_after(ctx, 7, 10ms),
                                        watched_sleep(ctx, 60s, slow2));
    CHECK(r.index == 1);
    CHECK(std::get<1>(r.value) == 7);
    // The losers were cancelled and have run to their end already.
    CHECK(slow1);
    CHECK(slow2);
    CHECK(clock_type::now() - t0 < scaled(10s)); // not the losers' 60 s
    CHECK(ctx.pending_operations() == 0);
  };
  ctx.run(body());
}

TEST_CASE("when_any: the cancelled losers see operation_canceled") {
  io_context ctx;
  result<void> loser_saw;
  auto loser = [&]() -> task<void> {
    loser_saw = co_await couring::sleep_for(ctx, 10s);
  };
  auto body = [&]() -> task<void> {
    auto r = co_await couring::when_any(loser(), value_after(ctx, 1, 5ms));
    CHECK(r.index == 1);
  };
  ctx.run(body());
  CHECK(loser_saw.error() == std::errc::operation_canceled);
}

TEST_CASE("when_any: vector form, and a winner that finishes at once") {
  io_context ctx;
  auto body = [&]() -> task<void> {
    std::vector<task<int>> racers;
    for (int i = 0; i < 20; ++i)
      racers.push_back(value_after(ctx, i, std::chrono::milliseconds(i == 13 ? 1 : 60'000)));
    auto r = co_await couring::when_any(std::move(racers));
    CHECK(r.index == 13);
    CHECK(r.value == 13);

    // The first task completes synchronously, before the others even start:
    // they start cancelled and end at once.
    bool other = false;
    auto s = co_await couring::when_any(text_now("now"), watched_sleep(ctx, 60s, other));
    CHECK(s.index == 0);
    CHECK(std::get<0>(s.value) == "now");
    CHECK(other);
  };
  const auto t0 = clock_type::now();
  ctx.run(body());
  CHECK(clock_type::now() - t0 < scaled(10s)); // not the losers' 60 s
}

TEST_CASE("when_any rethrows the winner's exception") {
  io_context ctx;
  bool other = false;
  auto body = [&]() -> task<std::string> {
    try {
      (void)co_await couring::when_any(throw_after(ctx, 1ms), watched_sleep(ctx, 10s, other));
    } catch (const std::runtime_error& e) {
      co_return e.what();
    }
    co_return "no exception";
  };
  CHECK(ctx.run(body()) == "child failed");
  CHECK(other);
}

TEST_CASE("cancelling an awaiter of when_all reaches every child") {
  io_context ctx;
  bool a = false, b = false;
  auto body = [&]() -> task<void> {
    auto both = couring::when_all(watched_sleep(ctx, 60s, a), watched_sleep(ctx, 60s, b));
    auto r = co_await couring::with_timeout(std::move(both), 20ms);
    // when_all's tuple is a plain value, so it is delivered; each child says
    // how the deadline reached it.
    REQUIRE(r);
    CHECK(std::get<0>(*r).error() == std::errc::operation_canceled);
    CHECK(std::get<1>(*r).error() == std::errc::operation_canceled);
  };
  const auto t0 = clock_type::now();
  ctx.run(body());
  CHECK(a);
  CHECK(b);
  CHECK(clock_type::now() - t0 < scaled(10s)); // not the children's 60 s
}
