#include <catch2/catch.hpp>

#include <memory>
#include <stdexcept>
#include <string>

#include <couring/io_context.hpp>
#include <couring/nop.hpp>
#include <couring/task.hpp>

using couring::io_context;
using couring::task;

namespace {

task<int> forty_two() {
  co_return 42;
}
task<void> nothing() {
  co_return;
}
task<int> add_one(task<int> t) {
  co_return co_await std::move(t) + 1;
}
task<int> fails() {
  throw std::runtime_error("boom");
  co_return 0;
}
task<std::unique_ptr<int>> move_only() {
  co_return std::make_unique<int>(7);
}

task<long> sync_chain(long n) {
  long sum = 0;
  for (long i = 0; i < n; ++i)
    sum += co_await forty_two();
  co_return sum;
}

task<int> nested(int depth) {
  if (depth == 0)
    co_return 0;
  co_return 1 + co_await nested(depth - 1);
}

} // namespace

TEST_CASE("task returns a value through run") {
  io_context ctx;
  CHECK(ctx.run(forty_two()) == 42);
  CHECK(ctx.run(add_one(forty_two())) == 43);
}

TEST_CASE("task<void> runs to completion") {
  io_context ctx;
  ctx.run(nothing());
  bool ran = false;
  auto body = [&]() -> task<void> {
    ran = true;
    co_return;
  };
  ctx.run(body());
  CHECK(ran);
}

TEST_CASE("task is lazy: nothing runs before it is awaited") {
  bool started = false;
  auto body = [&]() -> task<int> {
    started = true;
    co_return 1;
  };
  {
    task<int> t = body();
    CHECK_FALSE(started);
  } // destroyed without running: the frame is freed, nothing runs
  CHECK_FALSE(started);
  io_context ctx;
  task<int> t = body();
  CHECK_FALSE(started);
  CHECK(ctx.run(std::move(t)) == 1);
  CHECK(started);
}

TEST_CASE("an exception propagates to the awaiter and out of run") {
  io_context ctx;
  CHECK_THROWS_WITH(ctx.run(fails()), "boom");
  auto catcher = []() -> task<std::string> {
    try {
      co_await fails();
    } catch (const std::runtime_error& e) {
      co_return e.what();
    }
    co_return "not thrown";
  };
  CHECK(ctx.run(catcher()) == "boom");
}

TEST_CASE("task with a move-only result") {
  io_context ctx;
  auto p = ctx.run(move_only());
  REQUIRE(p);
  CHECK(*p == 7);
}

TEST_CASE("task is move-only and moves its frame") {
  task<int> a = forty_two();
  task<int> b = std::move(a);
  CHECK_FALSE(a.valid());
  CHECK(b.valid());
  a = std::move(b);
  CHECK(a.valid());
  io_context ctx;
  CHECK(ctx.run(std::move(a)) == 42);
}

// A task that finishes without suspending returns straight into the
// awaiter's await_suspend, so this holds at any optimisation level and under
// the sanitizers (no reliance on tail calls).
TEST_CASE("a million synchronously completing awaits do not overflow the stack") {
  io_context ctx;
  CHECK(ctx.run(sync_chain(1'000'000)) == 42'000'000L);
}

TEST_CASE("a chain of tasks that suspend resumes through symmetric transfer") {
  io_context ctx;
  auto leaf = [&]() -> task<int> {
    (void)co_await couring::nop(ctx);
    co_return 1;
  };
  auto loop = [&]() -> task<int> {
    int sum = 0;
    for (int i = 0; i < 10'000; ++i)
      sum += co_await leaf();
    co_return sum;
  };
  CHECK(ctx.run(loop()) == 10'000);
}

TEST_CASE("nested awaits a few thousand deep") {
  io_context ctx;
  CHECK(ctx.run(nested(5000)) == 5000);
}
