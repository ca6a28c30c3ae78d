// relay(from, to) against hostile peers and cancellation mid-splice: urgent
// (out-of-band) TCP data, a destination that never reads while the drain
// splice sleeps in the kernel, closes and timeouts at that point, and what
// transferred() says then. Runs on both backends (meson test --setup=epoll).

#include <catch2/catch.hpp>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace couring;
using namespace std::chrono_literals;
using test_support::connect_pair;
using test_support::loopback_listener;
using test_support::open_fd_count;
using test_support::require_ok;

namespace {

constexpr std::size_t mib = 1024 * 1024;

std::byte pattern_at(std::size_t i) {
  return static_cast<std::byte>((i * 7 + 3) % 251);
}

// Reads what s has until nothing comes for `quiet` (or its end): the count,
// and how many bytes differ from the pattern.
task<std::pair<std::size_t, std::size_t>> drain_pattern(stream& s,
                                                        std::chrono::milliseconds quiet) {
  std::vector<std::byte> buf(256 * 1024);
  std::size_t total = 0, wrong = 0;
  for (;;) {
    auto n = co_await with_timeout(s.read(buf), quiet);
    if (!n || *n == 0)
      co_return std::pair{total, wrong};
    for (std::size_t i = 0; i < *n; ++i)
      wrong += buf[i] != pattern_at(total + i);
    total += *n;
  }
}

// Writes pattern bytes to s until a write does not finish within 500 ms.
task<std::size_t> flood_pattern(stream& s, std::size_t limit) {
  std::vector<std::byte> buf(1 * mib);
  std::size_t sent = 0;
  while (sent < limit) {
    for (std::size_t i = 0; i < buf.size(); ++i)
      buf[i] = pattern_at(sent + i);
    auto w = co_await with_timeout(s.write_all(buf), 500ms);
    if (!w)
      co_return sent;
    sent += buf.size();
  }
  co_return sent;
}

void send_oob(tcp_stream& s, char c) {
  REQUIRE(::send(s.native_handle(), &c, 1, MSG_OOB) == 1);
}

} // namespace

TEST_CASE("relay hostile: urgent (MSG_OOB) data in the source neither ends the relay early nor "
          "spins; the bytes after it arrive, as with a plain read") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    // For comparison: a plain read steps over the urgent byte.
    require_ok(co_await a.client.write_all(std::string_view("abc")));
    send_oob(a.client, '!');
    require_ok(co_await a.client.write_all(std::string_view("def")));
    std::byte six[6];
    require_ok(co_await a.server.read_exactly(six));
    CHECK(test_support::text(six) == "abcdef");

    require_ok(co_await a.client.write_all(std::string_view("abc")));
    send_oob(a.client, '!');
    (void)co_await sleep_for(ctx, 20ms);
    require_ok(co_await a.client.write_all(std::string_view("def")));
    auto op = relay(a.server, b.server);
    auto relaying = [&]() -> task<result<std::size_t>> {
      auto& r = op;
      auto res = co_await r;
      (void)b.server.shutdown_write();
      co_return res;
    };
    auto later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 200ms);
      require_ok(co_await a.client.write_all(std::string_view("ghi")));
      require_ok(a.client.shutdown_write());
    };
    auto reading = [&]() -> task<std::string> {
      std::string s;
      std::byte buf[64];
      for (;;) {
        auto n = co_await b.client.read(buf);
        if (!n || *n == 0)
          co_return s;
        s += test_support::text(std::span(buf, *n));
      }
    };
    auto all = co_await with_timeout(when_all(relaying(), later(), reading()), 5s);
    require_ok(all);
    auto& [r, ignored, got] = *all;
    require_ok(r);
    CHECK(got == "abcdefghi");
    CHECK(*r == 9);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay hostile: a destination that never reads, relay ended by a timeout: "
          "transferred() is exactly what the destination's peer receives") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener); // b.client reads only afterwards
    auto op = relay(a.server, b.server);
    auto relaying = [&]() -> task<result<std::size_t>> {
      auto& r = op;
      co_return co_await r;
    };
    auto bounded = [&]() -> task<result<std::size_t>> {
      co_return co_await with_timeout(relaying(), 1s);
    };
    auto [r, flooded] = co_await when_all(bounded(), flood_pattern(a.client, 256 * mib));
    REQUIRE(!r);
    CHECK(r.error() == std::errc::timed_out);
    auto [got, wrong] = co_await drain_pattern(b.client, 300ms);
    INFO("flooded " << flooded << ", relayed " << op.transferred() << ", received " << got);
    CHECK(got == op.transferred());
    CHECK(wrong == 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay hostile: closing the destination while the drain waits on a full socket ends "
          "the relay with operation_canceled, promptly") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  for (int which : {0, 1}) { // close to, close from
    DYNAMIC_SECTION("close " << (which == 0 ? "to" : "from")) {
      auto body = [&]() -> task<void> {
        auto a = co_await connect_pair(ctx, listener);
        auto b = co_await connect_pair(ctx, listener); // b.client never reads
        auto op = relay(a.server, b.server);
        auto relaying = [&]() -> task<result<std::size_t>> {
          auto& r = op;
          co_return co_await r;
        };
        auto closer = [&]() -> task<void> {
          // By now the destination is full and the source held back.
          (void)co_await flood_pattern(a.client, 256 * mib);
          (which == 0 ? b.server : a.server).close();
        };
        const auto t0 = std::chrono::steady_clock::now();
        auto all = co_await with_timeout(when_all(relaying(), closer()), 20s);
        require_ok(all);
        auto& [r, ignored] = *all;
        REQUIRE(!r);
        CHECK(r.error() == std::errc::operation_canceled);
        CHECK(std::chrono::steady_clock::now() - t0 < test_support::scaled(10s));
        CHECK(op.transferred() > 0);
      };
      ctx.run(body());
      CHECK(ctx.pending_operations() == 0);
    }
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay hostile: destroying the io_context with relays in every stage (waiting for "
          "bytes, drain asleep on a full socket, waiting in line) frees everything") {
  const std::size_t fds_before = open_fd_count();
  int alive = 0;
  int resumed = 0;
  struct frame_counter {
    int* n;
    explicit frame_counter(int* c) : n(c) { ++*n; }
    ~frame_counter() { --*n; }
  };
  std::optional<io_context> holder(std::in_place);
  {
    io_context& ctx = *holder;
    auto listener = loopback_listener(ctx);
    bool all_started = false;
    // A relay waiting for bytes; a relay whose drain sleeps on a full
    // destination (b.client never reads) while its source is held back;
    // a second relay on the same streams and a read, both waiting in line.
    auto stages = [&]() -> task<void> {
      frame_counter fc(&alive);
      auto a = co_await connect_pair(ctx, listener);
      auto b = co_await connect_pair(ctx, listener);
      auto c = co_await connect_pair(ctx, listener);
      auto d = co_await connect_pair(ctx, listener);
      auto idle = [&]() -> task<void> {
        frame_counter f(&alive);
        (void)co_await relay(c.server, d.server);
        ++resumed;
      };
      auto busy = [&]() -> task<void> {
        frame_counter f(&alive);
        (void)co_await relay(a.server, b.server);
        ++resumed;
      };
      auto queued = [&]() -> task<void> {
        frame_counter f(&alive);
        (void)co_await relay(a.server, b.server);
        ++resumed;
      };
      auto reader = [&]() -> task<void> {
        frame_counter f(&alive);
        std::byte buf[16];
        (void)co_await a.server.read(buf);
        ++resumed;
      };
      auto flood = [&]() -> task<void> {
        (void)co_await flood_pattern(a.client, 256 * mib);
        all_started = true;
      };
      co_await when_all(idle(), busy(), queued(), reader(), flood());
      ++resumed;
    };
    ctx.spawn(stages());
    auto stopper = [&]() -> task<void> {
      while (!all_started)
        (void)co_await couring::sleep_for(ctx, 10ms);
      ctx.stop();
    };
    ctx.spawn(stopper());
    ctx.run();
    CHECK(all_started);
    CHECK(alive == 5);
    CHECK(resumed == 0);
    CHECK(ctx.pending_operations() > 0);
  }
  holder.reset();
  CHECK(alive == 0);
  CHECK(resumed == 0);
  CHECK(open_fd_count() == fds_before);
}
