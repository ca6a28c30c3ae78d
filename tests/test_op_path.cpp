// The op path's per-turn and per-operation steps (docs/design.md, "The op
// path"): one io_uring_enter per loop turn for everything prepared since the
// last, the owner check by thread pointer, and teardown deciding "abandon,
// do not resume" once per batch of CQEs.

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <thread>

#include <couring/couring.hpp>

#include "support.hpp"

using couring::io_context;
using couring::task;
using test_support::require_ok;
using test_support::scaled;
using test_support::text;

namespace {

task<void> nop_batch(io_context& ctx, int n, int& ok) {
  for (int i = 0; i < n; ++i) {
    auto r = co_await couring::nop(ctx);
    if (r)
      ++ok;
  }
}

// Reads into buf, first in line on the reader's read side.
task<void> read_first(couring::pipe_reader& r, std::span<std::byte> buf,
                      std::optional<couring::result<std::size_t>>& out) {
  out = co_await r.read(buf);
}

// Reads into buf through with_timeout, which takes the read by value (the
// awaitable is moved before it starts): it waits in line behind read_first
// and is issued from the side's queue by its record's issue_fn.
task<void> read_second(couring::pipe_reader& r, std::span<std::byte> buf,
                       std::optional<couring::result<std::size_t>>& out) {
  out = co_await couring::with_timeout(r.read(buf), scaled(std::chrono::seconds(10)));
}

task<void> shortcut_and_general_paths(io_context& ctx) {
  using namespace std::chrono_literals;
  // No object, scope, side or completion function: dispatch's shortcut.
  auto plain = co_await couring::nop(ctx);
  require_ok(plain);
  // A linked timeout (two CQEs for one record): the general path.
  auto timed = co_await couring::with_timeout(couring::nop(ctx), scaled(10s));
  require_ok(timed);
  // A scope: the general path clears the scope's current operation, so a
  // stop requested afterwards reaches nothing that has ended.
  std::stop_source source;
  auto scoped = co_await couring::with_stop_token(couring::nop(ctx), source.get_token());
  require_ok(scoped);
  source.request_stop();
  auto stopped = co_await couring::with_stop_token(couring::nop(ctx), source.get_token());
  REQUIRE_FALSE(stopped);
  CHECK(stopped.error() == std::errc::operation_canceled);
  // The shortcut again after all that: nothing was left behind.
  auto again = co_await couring::nop(ctx);
  require_ok(again);
}

} // namespace

TEST_CASE("a nop outside any scope, with a linked timeout and in a stop scope completes alike") {
  io_context ctx;
  ctx.run(shortcut_and_general_paths(ctx));
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("an operation moved before it starts waits in line and is issued from the queue") {
  io_context ctx;
  auto p = couring::pipe(ctx);
  require_ok(p);
  auto& reader = p->first;
  auto& writer = p->second;
  std::byte first_buf[2], second_buf[2];
  std::optional<couring::result<std::size_t>> first, second;
  ctx.spawn(read_first(reader, first_buf, first));
  ctx.spawn(read_second(reader, second_buf, second));
  auto feed = [&]() -> task<void> {
    // Both reads are in place (the first in the kernel, the second in line)
    // once the spawned tasks have run; then one write for each.
    auto y = co_await couring::nop(ctx);
    require_ok(y);
    CHECK_FALSE(first.has_value());
    CHECK_FALSE(second.has_value());
    auto w1 = co_await writer.write("ab");
    require_ok(w1);
    while (!first.has_value()) {
      auto n = co_await couring::nop(ctx);
      require_ok(n);
    }
    CHECK_FALSE(second.has_value()); // issued from the queue, still waiting for data
    auto w2 = co_await writer.write("cd");
    require_ok(w2);
  };
  ctx.spawn(feed());
  ctx.run();
  REQUIRE(first.has_value());
  REQUIRE(second.has_value());
  require_ok(*first);
  require_ok(*second);
  CHECK(text(std::span(first_buf, **first)) == "ab");
  CHECK(text(std::span(second_buf, **second)) == "cd");
}

TEST_CASE("a loop turn hands every operation prepared since the last to one io_uring_enter") {
  io_context ctx;
  constexpr int tasks = 32, rounds = 100;
  int ok = 0;
  for (int i = 0; i < tasks; ++i)
    ctx.spawn(nop_batch(ctx, rounds, ok));
  const auto before = ctx.enter_count();
  ctx.run();
  const auto enters = ctx.enter_count() - before;
  CHECK(ok == tasks * rounds);
  // Each turn submits the 32 NOPs the previous turn's completions prepared
  // and reaps their 32 CQEs: about one enter per round, never one per NOP.
  CHECK(enters >= rounds);
  CHECK(enters <= rounds + 10);
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("the thread pointer tells threads apart like their ids") {
  const void* here = couring::detail::thread_pointer();
  CHECK(here == couring::detail::thread_pointer()); // stable within a thread
  const void* there = nullptr;
  std::thread t([&] { there = couring::detail::thread_pointer(); });
  t.join();
  CHECK(there != nullptr);
  CHECK(there != here);
  io_context ctx;
  CHECK(ctx.ring().on_owner_thread_fast());
  bool other_is_owner = true;
  std::thread u([&] { other_is_owner = ctx.ring().on_owner_thread_fast(); });
  u.join();
  CHECK_FALSE(other_is_owner);
}

#ifndef NDEBUG
TEST_CASE("starting an operation from a thread that does not own the ring throws in debug builds") {
  io_context ctx;
  bool threw = false;
  std::thread t([&] {
    auto op = couring::nop(ctx);
    try {
      (void)op.start(std::noop_coroutine(), nullptr);
    } catch (const std::logic_error&) {
      threw = true;
    }
  });
  t.join();
  // Had it not thrown, a record on that thread's dead stack would be in
  // flight: stop here rather than run the ring.
  REQUIRE(threw);
  CHECK(ctx.pending_operations() == 0);
  int ok = 0;
  ctx.run(nop_batch(ctx, 3, ok)); // the owner still runs operations
  CHECK(ok == 3);
}
#endif

TEST_CASE("teardown reaps what is in flight without resuming anyone") {
  struct frame_guard {
    int* destroyed;
    ~frame_guard() { ++*destroyed; }
  };
  int resumed = 0, destroyed = 0;
  {
    io_context ctx;
    auto sleeper = [&]() -> task<void> {
      frame_guard g{&destroyed};
      (void)co_await couring::sleep_for(ctx, std::chrono::hours(1));
      ++resumed;
    };
    for (int i = 0; i < 8; ++i)
      ctx.spawn(sleeper());
    // One turn: the sleeps are submitted; then the loop stops with them
    // in flight.
    auto stopper = [&]() -> task<void> {
      (void)co_await couring::nop(ctx);
      ctx.stop();
    };
    ctx.spawn(stopper());
    ctx.run();
    CHECK(ctx.pending_operations() == 8);
  } // drains: the cancelled sleeps' CQEs are reaped, the frames destroyed
  CHECK(resumed == 0);
  CHECK(destroyed == 8);
}
