// The worker watchdog (io_context_options::worker_watchdog). Requests the
// kernel runs in its worker threads (file I/O, paths, splice) are counted
// while in flight; a loop that sleeps with such requests in flight and
// nothing completing nudges the kernel's worker pool once per interval, and
// never otherwise. The race it recovers from (a request queued just as the
// pool's last idle worker exits) cannot be provoked on demand: the
// benchmarks/worker_race program shows it, and its recovery, by repetition.

#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using namespace couring;

namespace {

io_context_options with_watchdog(std::chrono::milliseconds interval) {
  io_context_options o;
  o.worker_watchdog = interval;
  return o;
}

bool on_io_uring(const io_context& ctx) {
  return ctx.features().backend == backend::io_uring;
}

// What the loop did while a read of an empty FIFO (a file request that
// does not complete) was in flight for `waiting`, and after it.
struct watched {
  std::size_t in_flight_during = 0;
  std::uint64_t kicks_during = 0;
  std::size_t in_flight_after = 0;
  std::uint64_t kicks_after = 0; // during as long again with nothing in flight
};

watched watch_a_blocked_read(io_context& ctx, const std::string& fifo,
                             std::chrono::milliseconds waiting) {
  watched w;
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, fifo, {.read = true, .write = true});
    require_ok(f);
    std::byte buf[16];
    const std::uint64_t before = ctx.worker_kicks();
    auto look = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, waiting / 2);
      w.in_flight_during = ctx.worker_requests();
    };
    auto read = [&]() -> task<result<std::size_t>> {
      co_return co_await with_timeout(f->read_at(buf, 0), waiting);
    };
    auto [timed, ignored] = co_await when_all(read(), look());
    CHECK(timed.error() == std::errc::timed_out);
    w.kicks_during = ctx.worker_kicks() - before;
    w.in_flight_after = ctx.worker_requests();
    const std::uint64_t quiet = ctx.worker_kicks();
    (void)co_await sleep_for(ctx, waiting);
    w.kicks_after = ctx.worker_kicks() - quiet;
  };
  ctx.run(body());
  return w;
}

} // namespace

TEST_CASE("worker watchdog: a file request that waits is watched, once per interval; "
          "nothing in flight, no nudge") {
  temp_dir dir("watchdog");
  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  io_context ctx(with_watchdog(20ms));
  const watched w = watch_a_blocked_read(ctx, fifo, 300ms);
  CHECK(w.in_flight_during == 1);
  CHECK(w.in_flight_after == 0);
  CHECK(w.kicks_after == 0);
  if (on_io_uring(ctx)) {
    // About 15 at one per 20 ms; a loaded machine wakes late, never early.
    CHECK(w.kicks_during >= 3);
    CHECK(w.kicks_during <= 16);
  } else {
    CHECK(w.kicks_during == 0); // epoll: no kernel worker pool to nudge
  }
}

TEST_CASE("worker watchdog: 0 turns it off") {
  temp_dir dir("watchdog");
  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  io_context ctx(with_watchdog(0ms));
  const watched w = watch_a_blocked_read(ctx, fifo, 150ms);
  CHECK(w.in_flight_during == 1); // still counted
  CHECK(w.kicks_during == 0);
  CHECK(w.kicks_after == 0);
}

TEST_CASE("worker watchdog: a sleep, a socket read or a timer alone is never watched") {
  io_context ctx(with_watchdog(10ms));
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::byte buf[16];
    auto timed = co_await with_timeout(p.server.read(buf), 100ms);
    CHECK(timed.error() == std::errc::timed_out);
    (void)co_await sleep_for(ctx, 50ms);
  };
  ctx.run(body());
  CHECK(ctx.worker_kicks() == 0);
  CHECK(ctx.worker_requests() == 0);
}

TEST_CASE("worker watchdog: the count returns to 0 after every kind of file request, "
          "its errors, its cancellations and a closed file") {
  temp_dir dir("watchdog");
  io_context ctx(with_watchdog(1000ms));
  std::vector<std::size_t> counts; // worker_requests() after each step
  auto body = [&]() -> task<void> {
    auto note = [&] {
      counts.push_back(ctx.worker_requests());
    };
    auto missing = co_await file::open(ctx, dir / "missing");
    CHECK(!missing);
    note();
    auto f = co_await file::open(ctx, dir / "f", {.read = true, .write = true, .create = true});
    require_ok(f);
    note();
    require_ok(co_await f->write_at(bytes("hello"), 0));
    note();
    {
      // Kept in a variable: the count ends when its result is taken, not
      // when the awaitable goes away.
      auto all = f->write_all_at(bytes("hello, world"), 0);
      require_ok(co_await all);
      note();
    }
    std::byte buf[64];
    require_ok(co_await f->read_at(buf, 0));
    note();
    auto short_read = co_await f->read_exactly_at(std::span(buf, 64), 0);
    CHECK(short_read.error() == error::end_of_file);
    note();
    require_ok(co_await f->sync());
    require_ok(co_await f->size());
    require_ok(co_await f->stat());
    note();
    auto bad = co_await f->write_at(bytes("x"), 1ull << 62); // EFBIG or EINVAL
    CHECK(!bad);
    note();
    // Never awaited: never counted.
    { auto unused = f->read_at(buf, 0); }
    note();
    require_ok(co_await write_file(ctx, dir / "g", bytes("contents")));
    auto back = co_await read_file(ctx, dir / "g");
    require_ok(back);
    note();
    auto ro = co_await file::open(ctx, dir / "g");
    require_ok(ro);
    auto refused = co_await ro->write_at(bytes("x"), 0);
    CHECK(refused.error() == std::errc::bad_file_descriptor);
    note();
    f->close();
    auto after_close = co_await f->read_at(buf, 0); // ends at once: never issued
    CHECK(after_close.error() == std::errc::operation_canceled);
    note();
  };
  ctx.run(body());
  CHECK(counts.size() == 12);
  for (std::size_t i = 0; i < counts.size(); ++i) {
    INFO("step " << i);
    CHECK(counts[i] == 0);
  }
}

TEST_CASE("worker watchdog: relay and send_file are watched while they run, and counted off "
          "when they end, are cancelled, or their context is torn down") {
  temp_dir dir("watchdog");
  const std::string data = dir / "data";
  {
    std::vector<std::byte> contents(256 * 1024, std::byte{42});
    io_context ctx;
    require_ok(ctx.run(write_file(ctx, data, contents)));
  }
  io_context ctx(with_watchdog(20ms));
  auto listener = loopback_listener(ctx);
  std::size_t during_relay = 0, after_relay = 0, after_send_file = 0;
  std::uint64_t kicks_during_relay = 0;
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    // Nothing is sent: the relay waits for its source until the timeout.
    const std::uint64_t before = ctx.worker_kicks();
    auto look = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 100ms);
      during_relay = ctx.worker_requests();
    };
    auto relaying = [&]() -> task<result<std::size_t>> {
      co_return co_await with_timeout(relay(a.server, b.client), 200ms);
    };
    auto [relayed, ignored] = co_await when_all(relaying(), look());
    CHECK(relayed.error() == std::errc::timed_out);
    kicks_during_relay = ctx.worker_kicks() - before;
    after_relay = ctx.worker_requests();

    auto in = co_await file::open(ctx, data);
    require_ok(in);
    auto sending = [&]() -> task<result<std::size_t>> {
      co_return co_await send_file(a.client, *in, 0, 256 * 1024);
    };
    auto receiving = [&]() -> task<std::size_t> {
      std::vector<std::byte> buf(64 * 1024);
      std::size_t got = 0;
      while (got < 256 * 1024) {
        auto n = co_await a.server.read(buf);
        if (!n || *n == 0)
          break;
        got += *n;
      }
      co_return got;
    };
    auto [sent, got] = co_await when_all(sending(), receiving());
    require_ok(sent);
    CHECK(got == 256 * 1024);
    after_send_file = ctx.worker_requests();
  };
  ctx.run(body());
  CHECK(during_relay == 1);
  CHECK(after_relay == 0);
  CHECK(after_send_file == 0);
  if (on_io_uring(ctx))
    CHECK(kicks_during_relay >= 2);

  // Torn down with a relay in flight (spawned, never finished): the
  // context goes away cleanly (the sanitizer builds check for leaks).
  {
    io_context doomed(with_watchdog(20ms));
    auto l = loopback_listener(doomed);
    auto start = [&]() -> task<void> {
      auto p = co_await connect_pair(doomed, l);
      auto q = co_await connect_pair(doomed, l);
      auto forever = [](tcp_stream from, tcp_stream to) -> task<void> {
        (void)co_await relay(from, to);
      };
      doomed.spawn(forever(std::move(p.server), std::move(q.client)));
      (void)co_await sleep_for(doomed, 50ms);
      CHECK(doomed.worker_requests() == 1);
    };
    doomed.run(start());
  }
}

TEST_CASE("worker watchdog: out of range is std::invalid_argument") {
  auto make = [](std::chrono::milliseconds interval) {
    io_context ctx(with_watchdog(interval));
  };
  CHECK_THROWS_AS(make(-1ms), std::invalid_argument);
  CHECK_THROWS_AS(make(max_worker_watchdog + 1ms), std::invalid_argument);
  CHECK_NOTHROW(make(max_worker_watchdog));
  CHECK_NOTHROW(make(0ms));
}
