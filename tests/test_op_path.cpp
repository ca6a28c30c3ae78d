// The op path's per-turn and per-operation steps (docs/design.md, "The op
// path"): one io_uring_enter per loop turn for everything prepared since the
// last, the owner check by thread pointer, and teardown deciding "abandon,
// do not resume" once per batch of CQEs.

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include <couring/couring.hpp>

#include "support.hpp"

using couring::io_context;
using couring::task;

namespace {

task<void> nop_batch(io_context& ctx, int n, int& ok) {
  for (int i = 0; i < n; ++i) {
    auto r = co_await couring::nop(ctx);
    if (r)
      ++ok;
  }
}

} // namespace

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
