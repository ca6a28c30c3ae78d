#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using couring::endpoint;
using couring::io_context;
using couring::result;
using couring::task;
using couring::tcp_listener;
using couring::tcp_stream;
using clock_type = std::chrono::steady_clock;

namespace {

// Connections to a listener that never accepts, until the accept queue is
// full and the next connect hangs (its SYN is dropped).
struct full_backlog {
  tcp_listener listener;
  std::vector<int> fillers;
  explicit full_backlog(io_context& ctx)
      : listener(tcp_listener::bind(ctx, endpoint::ipv4_loopback(0), {.backlog = 0}).value()) {
    const endpoint ep = listener.local_endpoint();
    for (int i = 0; i < 8; ++i) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      ::connect(fd, ep.data(), ep.size());
      fillers.push_back(fd);
    }
    std::this_thread::sleep_for(50ms); // let the handshakes that can finish finish
  }
  ~full_backlog() {
    for (int fd : fillers)
      ::close(fd);
  }
};

} // namespace

TEST_CASE("with_timeout on a read from a silent peer gives timed_out") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::byte buf[16];
    const auto t0 = clock_type::now();
    auto r = co_await couring::with_timeout(p.server.read(buf), 50ms);
    const auto took = clock_type::now() - t0;
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::timed_out);
    // Never early; the upper bound only shows that it fired (a busy machine
    // may be late by a lot).
    CHECK(took >= 50ms);
    CHECK(took < 50ms + scaled(5s));
    // The stream still works afterwards, and no byte was lost.
    auto w = co_await p.client.write_all(bytes("after"));
    REQUIRE(w);
    std::byte got[5];
    auto rr = co_await couring::with_timeout(p.server.read_exactly(got), 5s);
    REQUIRE(rr);
    CHECK(text(got) == "after");
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("a linked timeout fits even in the smallest ring") {
  io_context ctx({.sq_entries = 1}); // raised to 2: a request and its timeout
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::byte buf[4];
    for (int i = 0; i < 20; ++i) {
      auto r = co_await couring::with_timeout(p.server.read(buf), 1ms);
      CHECK(r.error() == std::errc::timed_out);
    }
  };
  ctx.run(body());
}

TEST_CASE("with_timeout delivers the result when the operation wins") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    auto w = co_await p.client.write_all(bytes("data"));
    REQUIRE(w);
    std::byte buf[16];
    const auto t0 = clock_type::now();
    auto r = co_await couring::with_timeout(p.server.read(buf), 60s);
    REQUIRE(r);
    CHECK(*r == 4);
    CHECK(clock_type::now() - t0 < scaled(5s)); // the 60 s timer did not hold it up
    auto s = co_await couring::with_timeout(couring::sleep_for(ctx, 1ms), 60s);
    CHECK(s.has_value());
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("with_timeout on a task cancels the operation it is suspended on, however deep") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::byte buf[16];
    const auto t0 = clock_type::now();
    auto r = co_await couring::with_timeout(nested_read(p.server, buf, 10), 50ms);
    const auto took = clock_type::now() - t0;
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::timed_out);
    CHECK(took >= 50ms);
    CHECK(took < 50ms + scaled(5s));

    // A task that finishes first gives its value and leaves no timer behind.
    auto w = co_await p.client.write_all(bytes("x"));
    REQUIRE(w);
    auto ok = co_await couring::with_timeout(nested_read(p.server, buf, 10), 10s);
    REQUIRE(ok);
    CHECK(*ok == 1);
    CHECK(ctx.pending_operations() == 0);
  };
  ctx.run(body());
}

TEST_CASE("with_timeout on tasks of other result types") {
  io_context ctx;
  auto slow_int = [&]() -> task<int> {
    (void)co_await couring::sleep_for(ctx, 60s);
    co_return 1;
  };
  auto fast_int = [&]() -> task<int> {
    co_return 2;
  };
  auto slow_void = [&]() -> task<void> {
    (void)co_await couring::sleep_for(ctx, 60s);
  };
  auto body = [&]() -> task<void> {
    // A plain value is the task's answer, even when the deadline cut its
    // sleep short: it is delivered, never dropped.
    result<int> a = co_await couring::with_timeout(slow_int(), 20ms);
    REQUIRE(a);
    CHECK(*a == 1);
    result<int> b = co_await couring::with_timeout(fast_int(), 1s);
    REQUIRE(b);
    CHECK(*b == 2);
    result<void> c = co_await couring::with_timeout(slow_void(), 20ms);
    CHECK(c.error() == std::errc::timed_out);
  };
  const auto t0 = clock_type::now();
  ctx.run(body());
  CHECK(clock_type::now() - t0 < scaled(10s)); // the deadlines cut the 60 s sleeps short
}

TEST_CASE("with_timeout on write_all covers the whole transfer") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    const auto big = pattern(7, 64 << 20); // the peer never reads: cannot all fit
    auto r = co_await couring::with_timeout(p.client.write_all(big), 100ms);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::timed_out);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("a connect that never completes times out and its socket is closed") {
  io_context ctx;
  full_backlog backlog(ctx);
  const auto fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    const auto t0 = clock_type::now();
    auto r = co_await couring::with_timeout(
        tcp_stream::connect(ctx, backlog.listener.local_endpoint()), 100ms);
    const auto took = clock_type::now() - t0;
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::timed_out);
    CHECK(took >= 100ms);
    CHECK(took < 100ms + scaled(5s));
  };
  ctx.run(body());
  CHECK(open_fd_count() == fds_before); // the connecting socket is gone
  CHECK(ctx.pending_operations() == 0);
}

// The peer sends one byte about every millisecond while the reader waits with
// a 1 ms linked timeout: the read and the timeout race, in both CQE orders.
// Whatever each read gives, the bytes the reader collects must be exactly the
// sequence the peer sent.
TEST_CASE("linked-timeout race: no data lost in either completion order") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  constexpr int messages = 1500;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    joining_thread peer([fd = p.client.native_handle()] {
      for (int i = 0; i < messages; ++i) {
        const auto b = static_cast<unsigned char>(i & 0xff);
        if (::send(fd, &b, 1, MSG_NOSIGNAL) != 1)
          break; // the reader failed; it reports that itself
        std::this_thread::sleep_for(std::chrono::microseconds(900 + (i % 7) * 50));
      }
      ::shutdown(fd, SHUT_WR);
    });
    int received = 0, timeouts = 0, mismatches = 0;
    for (;;) {
      std::byte buf[64];
      auto r = co_await couring::with_timeout(p.server.read(buf), 1ms);
      if (!r) {
        REQUIRE(r.error() == std::errc::timed_out);
        ++timeouts;
        continue;
      }
      if (*r == 0)
        break;
      for (std::size_t i = 0; i < *r; ++i, ++received)
        if (buf[i] != static_cast<std::byte>(received & 0xff))
          ++mismatches;
    }
    peer.join();
    INFO("timeouts: " << timeouts);
    CHECK(received == messages);
    CHECK(mismatches == 0);
    CHECK(timeouts > 0); // the race really happened
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}
