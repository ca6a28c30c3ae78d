// relay(from, to[, max_bytes]): stream to stream through a pipe with
// IORING_OP_SPLICE. Every byte checked, max_bytes, end of stream, resets,
// closes and cancellation while pending, a destination that never reads and
// a source that floods it, descriptors and in-flight requests left behind.
// The whole file runs on both backends (meson test --setup=epoll).

#include <catch2/catch.hpp>

#include <chrono>
#include <cstddef>
#include <stop_token>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace couring;
using namespace std::chrono_literals;
using test_support::connect_pair;
using test_support::fill_pattern;
using test_support::loopback_listener;
using test_support::open_fd_count;
using test_support::pattern_at;
using test_support::require_ok;

namespace {

constexpr std::size_t mib = 1024 * 1024;

// Writes total pattern bytes to s in 256 KiB pieces, then shuts its write side.
task<result<std::size_t>> send_pattern(stream& s, std::size_t total, bool shut = true) {
  std::vector<std::byte> buf(256 * 1024);
  std::size_t sent = 0;
  while (sent < total) {
    const std::size_t n = std::min(buf.size(), total - sent);
    fill_pattern(std::span(buf).first(n), sent);
    auto w = co_await s.write_all(std::span(buf).first(n));
    if (!w)
      co_return w.error();
    sent += n;
  }
  if (shut)
    (void)s.shutdown_write();
  co_return sent;
}

struct received {
  std::size_t bytes = 0;
  std::size_t wrong = 0; // bytes that differ from the pattern
};

// Reads s to its end (or to its first error), checking every byte.
task<received> receive_pattern(stream& s) {
  std::vector<std::byte> buf(256 * 1024);
  received r;
  for (;;) {
    auto n = co_await s.read(buf);
    if (!n || *n == 0)
      co_return r;
    for (std::size_t i = 0; i < *n; ++i)
      if (buf[i] != pattern_at(r.bytes + i))
        ++r.wrong;
    r.bytes += *n;
  }
}

// RST instead of FIN when s is closed.
void abort_on_close(tcp_stream& s) {
  linger lg{1, 0};
  REQUIRE(::setsockopt(s.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
}

std::size_t size_arg(std::size_t total) {
  // 16 MiB; 4 MiB under sanitizers (COURING_TEST_TIME_SCALE > 1).
  return test_support::time_scale() > 1 ? total / 4 : total;
}

// total pattern bytes written to `sender`, relayed from `from` to `to` (then
// to's end passed on), read back from `receiver`: every byte checked.
task<void> relay_and_check(stream& sender, stream& from, stream& to, stream& receiver,
                           std::size_t total) {
  auto relaying = [&]() -> task<result<std::size_t>> {
    auto r = co_await relay(from, to);
    (void)to.shutdown_write();
    co_return r;
  };
  auto [sent, moved, got] =
      co_await when_all(send_pattern(sender, total), relaying(), receive_pattern(receiver));
  require_ok(sent);
  require_ok(moved);
  CHECK(*moved == total);
  CHECK(got.bytes == total);
  CHECK(got.wrong == 0);
}

} // namespace

TEST_CASE("relay: 16 MiB from one connection to another, every byte checked, then from's end") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t total = size_arg(16 * mib);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener); // a.client -> a.server
    auto b = co_await connect_pair(ctx, listener); // b.server -> b.client
    co_await relay_and_check(a.client, a.server, b.server, b.client, total);

    // A source already at its end: 0 bytes, at once.
    auto c = co_await connect_pair(ctx, listener);
    require_ok(c.client.shutdown_write());
    auto none = co_await relay(c.server, b.server);
    require_ok(none);
    CHECK(*none == 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay: echo on one stream, relay(s, s), every byte checked") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t total = size_arg(16 * mib);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    co_await relay_and_check(p.client, p.server, p.server, p.client, total);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay: max_bytes stops exactly; what follows stays in from for the next read") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    const std::size_t total = 3 * mib + 17;
    auto sent = co_await send_pattern(a.client, total, false);
    require_ok(sent);
    // Odd sizes and a small pipe: many rounds, none may take a byte too many.
    for (std::size_t chunk : {std::size_t{4096}, std::size_t{65536}}) {
      relay_options o;
      o.pipe_size = 65536;
      o.chunk = chunk;
      const std::size_t offset = chunk == 4096 ? 0 : 1 * mib + 4099;
      auto moved = co_await relay(a.server, b.server, 1 * mib + 4099, o);
      require_ok(moved);
      CHECK(*moved == 1 * mib + 4099);
      std::vector<std::byte> got(*moved);
      require_ok(co_await b.client.read_exactly(got));
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < got.size(); ++i)
        wrong += got[i] != pattern_at(offset + i);
      CHECK(wrong == 0);
    }
    // The rest is still in a.server, in order, for a plain read.
    std::vector<std::byte> rest(total - 2 * (1 * mib + 4099));
    require_ok(co_await a.server.read_exactly(rest));
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < rest.size(); ++i)
      wrong += rest[i] != pattern_at(2 * (1 * mib + 4099) + i);
    CHECK(wrong == 0);
    auto zero = co_await relay(a.server, b.server, 0);
    require_ok(zero);
    CHECK(*zero == 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay: the destination's peer resets midway: EPIPE/ECONNRESET, transferred() right, "
          "no descriptor left") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    auto op = relay(a.server, b.server);
    auto relaying = [&]() -> task<result<std::size_t>> {
      auto& r = op; // g++ 12 wants to copy a captured awaitable
      co_return co_await r;
    };
    auto resetter = [&]() -> task<std::size_t> {
      std::vector<std::byte> buf(1 * mib);
      auto n = co_await b.client.read_exactly(buf);
      require_ok(n);
      abort_on_close(b.client);
      b.client.close();
      co_return buf.size();
    };
    // The source keeps sending until the relay stops taking (its own
    // write fails or stalls: the timeout below ends it).
    auto source = [&]() -> task<void> {
      (void)co_await with_timeout(send_pattern(a.client, 256 * mib), 5s);
    };
    auto all = co_await with_timeout(when_all(relaying(), resetter(), source()), 30s);
    require_ok(all);
    auto& [r, read_before_reset, ignored] = *all;
    REQUIRE(!r);
    INFO(r.error().message());
    CHECK((r.error() == std::errc::broken_pipe || r.error() == std::errc::connection_reset));
    CHECK(op.transferred() >= read_before_reset);
    CHECK(op.transferred() < 256 * mib);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay: the source's peer resets midway: ECONNRESET, the count so far") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    auto op = relay(a.server, b.server);
    auto relaying = [&]() -> task<result<std::size_t>> {
      auto& r = op;
      auto res = co_await r;
      // The receiver reads to its end: without this it waited for the 30 s
      // timeout below, which then ended it (the test passed, 30 s later).
      (void)b.server.shutdown_write();
      co_return res;
    };
    auto source = [&]() -> task<void> {
      require_ok(co_await send_pattern(a.client, 2 * mib, false));
      (void)co_await sleep_for(ctx, 100ms);
      abort_on_close(a.client);
      a.client.close();
    };
    auto all =
        co_await with_timeout(when_all(relaying(), source(), receive_pattern(b.client)), 30s);
    require_ok(all);
    auto& [r, ignored, got] = *all;
    REQUIRE(!r);
    INFO(r.error().message());
    CHECK(r.error() == std::errc::connection_reset);
    CHECK(op.transferred() == 2 * mib);
    CHECK(got.wrong == 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay: closing either stream while a relay is pending ends it with "
          "operation_canceled; nothing left in flight") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  for (int which : {0, 1, 2}) { // close from, close to, close the one stream of an echo
    DYNAMIC_SECTION("close " << (which == 0 ? "from" : which == 1 ? "to" : "the echo stream")) {
      auto body = [&]() -> task<void> {
        auto a = co_await connect_pair(ctx, listener);
        auto b = co_await connect_pair(ctx, listener);
        tcp_stream& from = a.server;
        tcp_stream& to = which == 2 ? a.server : b.server;
        // Some bytes go through first: the relay is in its loops, not starting.
        require_ok(co_await a.client.write_all(std::string_view("hello")));
        auto op = relay(from, to);
        auto relaying = [&]() -> task<result<std::size_t>> {
          auto& r = op;
          co_return co_await r;
        };
        auto closer = [&]() -> task<void> {
          std::byte five[5];
          require_ok(co_await (which == 2 ? a.client : b.client).read_exactly(five));
          (void)co_await sleep_for(ctx, 50ms);
          (which == 1 ? to : from).close();
        };
        auto all = co_await with_timeout(when_all(relaying(), closer()), 10s);
        require_ok(all);
        auto& [r, ignored] = *all;
        REQUIRE(!r);
        CHECK(r.error() == std::errc::operation_canceled);
        CHECK(op.transferred() == 5);
        // The other stream is still usable: its sides were given back.
        tcp_stream& other = which == 1 ? a.server : b.server;
        if (which != 2) {
          auto w = co_await other.write_all(std::string_view("x"));
          (void)w;
        }
        // A relay on the closed stream: canceled before anything starts.
        auto after = co_await relay(from, to);
        CHECK(after.error() == std::errc::operation_canceled);
      };
      ctx.run(body());
      CHECK(ctx.pending_operations() == 0);
    }
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay: with_timeout and with_stop_token cancel a relay waiting for bytes") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    const auto t0 = std::chrono::steady_clock::now();
    auto timed = co_await with_timeout(relay(a.server, b.server), 100ms);
    CHECK(timed.error() == std::errc::timed_out);
    CHECK(std::chrono::steady_clock::now() - t0 < test_support::scaled(5s));

    std::stop_source source;
    auto stopper = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 50ms);
      source.request_stop();
    };
    auto stoppable = [&]() -> task<result<std::size_t>> {
      co_return co_await with_stop_token(relay(a.server, b.server), source.get_token());
    };
    auto [stopped, ignored] = co_await when_all(stoppable(), stopper());
    CHECK(stopped.error() == std::errc::operation_canceled);

    // Both streams still work, and nothing was lost: a relay afterwards
    // moves the next bytes.
    require_ok(co_await a.client.write_all(std::string_view("after")));
    auto moved = co_await relay(a.server, b.server, 5);
    require_ok(moved);
    std::byte five[5];
    require_ok(co_await b.client.read_exactly(five));
    CHECK(test_support::text(five) == "after");
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay: a read on from and a second relay wait in line behind a relay; each side "
          "serves in the order it was asked") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    require_ok(co_await a.client.write_all(std::string_view("0123456789")));
    auto first = [&]() -> task<result<std::size_t>> {
      co_return co_await relay(a.server, b.server, 4);
    };
    auto second = [&]() -> task<result<std::size_t>> {
      co_return co_await relay(a.server, b.server, 3);
    };
    auto reader = [&]() -> task<std::string> {
      std::byte three[3];
      auto r = co_await a.server.read_exactly(three);
      if (!r)
        co_return r.error().message();
      co_return test_support::text(three);
    };
    auto [x, y, z] = co_await when_all(first(), second(), reader());
    require_ok(x);
    require_ok(y);
    // The second relay waited for to's write side, the read for from's read
    // side (which it reached first): 0123 relayed, 456 read, 789 relayed.
    CHECK(z == "456");
    std::byte seven[7];
    require_ok(co_await b.client.read_exactly(seven));
    CHECK(test_support::text(seven) == "0123789");
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay: a destination that never reads: bounded by the timeout; a flooding source is "
          "held back (the pipe fills, nothing grows)") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener); // b.client never reads
    std::size_t flooded = 0;
    auto flood = [&]() -> task<void> {
      std::vector<std::byte> buf(1 * mib);
      for (;;) {
        auto w = co_await with_timeout(a.client.write_all(buf), 1s);
        if (!w)
          co_return; // held back: the relay stopped taking
        flooded += buf.size();
      }
    };
    auto op = relay(a.server, b.server);
    auto relaying = [&]() -> task<result<std::size_t>> {
      auto& r = op;
      co_return co_await r;
    };
    auto bounded = [&]() -> task<result<std::size_t>> {
      co_return co_await with_timeout(relaying(), 1500ms);
    };
    auto [r, ignored] = co_await when_all(bounded(), flood());
    REQUIRE(!r);
    CHECK(r.error() == std::errc::timed_out);
    INFO("flooded " << flooded << " bytes, relayed " << op.transferred());
    // What the flood got rid of is what the socket buffers on both
    // connections and the pipe hold (a few MiB each), not what it wanted.
    CHECK(op.transferred() < 64 * mib);
    CHECK(flooded < 128 * mib);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay: never opened, closed, non-blocking streams, other kinds of streams") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    tcp_stream never;
    auto none = co_await relay(never, a.server);
    CHECK(none.error() == std::errc::bad_file_descriptor);
    auto none2 = co_await relay(a.server, never);
    CHECK(none2.error() == std::errc::bad_file_descriptor);

    // Non-blocking sockets with small buffers: short splices, EAGAIN, polls.
    auto b = co_await connect_pair(ctx, listener);
    for (tcp_stream* s : {&a.server, &b.server}) {
      const int fd = s->native_handle();
      REQUIRE(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
      int size = 16384;
      REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size) == 0);
    }
    co_await relay_and_check(a.client, a.server, b.server, b.client, 4 * mib);

    // A pipe as the source, a unix stream pair as the destination.
    // (Not a structured binding: clang 14 cannot capture one in a lambda.)
    auto ends = couring::pipe(ctx).value();
    auto& in = ends.first;
    auto& out = ends.second;
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    unix_stream u0(ctx, sv[0]), u1(ctx, sv[1]);
    auto writer = [&]() -> task<void> {
      require_ok(co_await out.write_all(std::string_view("through a pipe")));
      out.close();
    };
    auto piping = [&]() -> task<result<std::size_t>> {
      auto r = co_await relay(in, u0);
      (void)u0.shutdown_write();
      co_return r;
    };
    auto reading = [&]() -> task<std::string> {
      std::string s;
      std::byte buf[64];
      for (;;) {
        auto n = co_await u1.read(buf);
        if (!n || *n == 0)
          co_return s;
        s += test_support::text(std::span(buf, *n));
      }
    };
    auto [w, piped, text] = co_await when_all(writer(), piping(), reading());
    require_ok(piped);
    CHECK(*piped == 14);
    CHECK(text == "through a pipe");
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay: streams of two io_contexts are refused (std::invalid_argument)") {
  io_context ctx, other;
  auto listener = loopback_listener(ctx);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  unix_stream foreign(other, sv[0]);
  unix_stream mine(ctx, sv[1]);
  bool threw = false;
  auto body = [&]() -> task<void> {
    try {
      (void)co_await relay(foreign, mine);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
  };
  ctx.run(body());
  CHECK(threw);
}

TEST_CASE("relay: an echo on a direct descriptor (io_uring's file table), every byte checked") {
  io_context ctx;
  listen_options o;
  o.direct_descriptors = true; // ignored on the epoll backend: plain descriptors there
  auto listener = loopback_listener(ctx, o);
  const std::size_t total = 4 * mib;
  auto body = [&]() -> task<void> {
    auto client = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(client);
    auto server = co_await listener.accept();
    require_ok(server);
    CHECK(server->is_direct() == (ctx.features().backend == backend::io_uring));
    // shutdown_write needs a real descriptor: max_bytes ends this echo.
    auto echo = [&]() -> task<result<std::size_t>> {
      co_return co_await relay(*server, *server, total);
    };
    auto check = [&]() -> task<std::size_t> {
      std::vector<std::byte> buf(total);
      auto n = co_await client->read_exactly(buf);
      require_ok(n);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < total; ++i)
        wrong += buf[i] != pattern_at(i);
      co_return wrong;
    };
    auto [sent, moved, wrong] =
        co_await when_all(send_pattern(*client, total, false), echo(), check());
    require_ok(sent);
    require_ok(moved);
    CHECK(*moved == total);
    CHECK(wrong == 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}
