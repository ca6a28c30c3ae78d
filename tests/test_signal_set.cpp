// signal_set: signals delivered to the waiting task through a signalfd read
// on the ring; queued signals; cancellation and close; the thread's signal
// mask restored after close.

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using namespace couring;

namespace {
bool blocked(int sig) {
  sigset_t now;
  pthread_sigmask(SIG_BLOCK, nullptr, &now);
  return sigismember(&now, sig) == 1;
}
} // namespace

TEST_CASE("signal_set: raise and kill reach the waiting task") {
  io_context ctx;
  signal_set signals(ctx, {SIGUSR1, SIGUSR2});
  CHECK(blocked(SIGUSR1));
  CHECK(blocked(SIGUSR2));
  auto body = [&]() -> task<void> {
    auto raise_later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 10ms);
      ::raise(SIGUSR1); // this thread only
    };
    auto waiter = [&]() -> task<result<int>> {
      co_return co_await signals.wait();
    };
    auto [got, ignored] = co_await when_all(waiter(), raise_later());
    require_ok(got);
    CHECK(*got == SIGUSR1);

    ::kill(::getpid(), SIGUSR2); // the process: pending until waited for
    auto second = co_await with_timeout(signals.wait(), 5s);
    require_ok(second);
    CHECK(*second == SIGUSR2);
  };
  ctx.run(body());
}

TEST_CASE("signal_set: two signals queued before the wait are both delivered") {
  io_context ctx;
  signal_set signals(ctx, {SIGUSR1, SIGUSR2});
  ::raise(SIGUSR2);
  ::raise(SIGUSR1);
  auto body = [&]() -> task<void> {
    auto a = co_await with_timeout(signals.wait(), 5s);
    auto b = co_await with_timeout(signals.wait(), 5s);
    require_ok(a);
    require_ok(b);
    CHECK(*a == SIGUSR1); // lowest number first
    CHECK(*b == SIGUSR2);
    auto none = co_await with_timeout(signals.wait(), 20ms);
    CHECK(none.error() == std::errc::timed_out);
  };
  ctx.run(body());
}

TEST_CASE("signal_set: a wait is cancellable; close with a wait pending gives operation_canceled") {
  io_context ctx;
  signal_set signals(ctx, {SIGUSR1});
  auto body = [&]() -> task<void> {
    std::stop_source stop;
    auto stop_later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 10ms);
      stop.request_stop();
    };
    auto waiter = [&]() -> task<result<int>> {
      co_return co_await with_stop_token(signals.wait(), stop.get_token());
    };
    auto [stopped, ignored] = co_await when_all(waiter(), stop_later());
    CHECK(stopped.error() == std::errc::operation_canceled);

    auto close_later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 10ms);
      signals.close();
    };
    auto waiter2 = [&]() -> task<result<int>> {
      co_return co_await signals.wait();
    };
    auto [closed, ignored2] = co_await when_all(waiter2(), close_later());
    CHECK(closed.error() == std::errc::operation_canceled);
    auto after = co_await signals.wait();
    CHECK(after.error() == std::errc::operation_canceled);
    signal_set never;
    auto none = co_await never.wait();
    CHECK(none.error() == std::errc::bad_file_descriptor);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("signal_set: close restores the mask; what was blocked before stays blocked") {
  io_context ctx;
  REQUIRE(!blocked(SIGUSR1));
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &usr2, nullptr); // blocked by the application
  {
    signal_set a(ctx, {SIGUSR1, SIGUSR2});
    {
      signal_set b(ctx, {SIGUSR1});
      CHECK(blocked(SIGUSR1));
    }
    CHECK(blocked(SIGUSR1)); // a still holds it
    signal_set moved = std::move(a);
    CHECK(blocked(SIGUSR1));
  }
  CHECK(!blocked(SIGUSR1));
  CHECK(blocked(SIGUSR2));
  pthread_sigmask(SIG_UNBLOCK, &usr2, nullptr);
  CHECK_THROWS_AS(signal_set(ctx, {SIGKILL}), std::invalid_argument);
  CHECK_THROWS_AS(signal_set(ctx, {0}), std::invalid_argument);
  CHECK(!blocked(SIGUSR1));
}
