// The README's examples, compiled and run, so that they stay true.

#include <catch2/catch.hpp>

#include <chrono>
#include <stop_token>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace couring;
using namespace std::chrono_literals;

namespace readme_echo {
// --- README "An echo server" (main() replaced by the test below) ---------------
task<void> echo(tcp_stream stream) {
  std::byte buf[4096];
  for (;;) {
    auto n = co_await stream.read(buf);
    if (!n || *n == 0)
      co_return; // error or end of stream: the destructor closes
    if (!co_await stream.write_all(std::span(buf, *n)))
      co_return;
  }
}

task<void> serve(io_context& ctx, tcp_listener listener) {
  for (;;) {
    auto conn = co_await listener.accept();
    if (conn)
      ctx.spawn(echo(std::move(*conn)));
  }
}
} // namespace readme_echo

TEST_CASE("README: the echo server echoes") {
  io_context ctx;
  auto listener = tcp_listener::bind(ctx, endpoint::parse("127.0.0.1:0").value()).value();
  const endpoint ep = listener.local_endpoint();
  ctx.spawn(readme_echo::serve(ctx, std::move(listener)));
  auto client = [&]() -> task<std::string> {
    auto s = co_await tcp_stream::connect(ctx, ep);
    test_support::require_ok(s);
    test_support::require_ok(co_await s->write_all(std::string_view("echo me")));
    std::byte buf[7];
    test_support::require_ok(co_await s->read_exactly(buf));
    co_return test_support::text(buf);
  };
  CHECK(ctx.run(client()) == "echo me");
}

namespace readme_timeouts {
task<result<std::size_t>> handle_request(tcp_stream& stream) {
  std::byte b[16];
  co_return co_await stream.read(b);
}
task<int> fetch(io_context& ctx, int x) {
  (void)co_await sleep_for(ctx, 1ms);
  co_return x;
}
task<result<std::size_t>> read_reply(tcp_stream& stream) {
  return handle_request(stream);
}
task<void> heartbeat(io_context& ctx) {
  (void)co_await sleep_for(ctx, 20ms);
}

task<void> examples(io_context& ctx, tcp_stream& stream, const endpoint& remote) {
  std::byte buf[16];
  int x = 1, y = 2;
  // --- README "Timeouts and cancellation" ---------------------------------------
  // A deadline on one operation: an IORING_OP_LINK_TIMEOUT linked to the read.
  auto n = co_await with_timeout(stream.read(buf), 5s);
  if (!n && n.error() == std::errc::timed_out) { /* the peer was silent */
  }

  // A deadline on a whole task: when it expires, whatever operation the task is
  // suspended on -- however deeply nested -- is cancelled.
  auto conn = co_await with_timeout(tcp_stream::connect(ctx, remote), 100ms);

  // Cancellation from anywhere (any thread) through std::stop_token.
  std::stop_source stop;
  stop.request_stop();
  auto r = co_await with_stop_token(handle_request(stream), stop.get_token());

  // Timers, and structured concurrency.
  (void)co_await sleep_for(ctx, 10ms);
  auto [a, b] = co_await when_all(fetch(ctx, x), fetch(ctx, y));
  auto first = co_await when_any(read_reply(stream), heartbeat(ctx));
  // ------------------------------------------------------------------------------
  // The peer reset the connection (see the test below), so reads fail at once.
  CHECK(n.error() == std::errc::connection_reset);
  CHECK(conn.has_value());
  CHECK(r.error() == std::errc::operation_canceled);
  CHECK(a == 1);
  CHECK(b == 2);
  CHECK(first.index == 0);                           // the failing read beat the 20 ms heartbeat
  CHECK(std::get<0>(first.value).value_or(99) == 0); // after the reset: end of stream
}
} // namespace readme_timeouts

TEST_CASE("README: the timeout and cancellation examples run") {
  io_context ctx;
  auto listener = test_support::loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto [client, server] = co_await test_support::connect_pair(ctx, listener);
    // Make the first read end at once with an error rather than wait 5 s.
    linger lg{.l_onoff = 1, .l_linger = 0};
    ::setsockopt(client.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    client.close();
    (void)co_await nop(ctx);
    co_await readme_timeouts::examples(ctx, server, listener.local_endpoint());
  };
  ctx.run(body());
}

namespace readme_names {
task<void> examples(io_context& ctx, std::string port) {
  // --- README "Names" --------------------------------------------------------------
  // "host:port": a numeric address connects directly; a name is resolved, and
  // its IPv6 and IPv4 addresses are raced (RFC 8305 Happy Eyeballs: families
  // interleaved, the next attempt 250 ms after the previous unless it failed).
  auto conn = co_await tcp_stream::connect(ctx, "localhost:" + port);

  // The addresses themselves, best first (RFC 6724 order).
  auto addrs = co_await resolve(ctx, "localhost", port);
  if (!addrs && addrs.error() == resolve_error::no_such_name) { /* NXDOMAIN */
  }

  // Other name servers, shorter timeouts (also how the tests reach their own
  // DNS server); before the first resolve, or while none is pending.
  auto configured = configure_resolver(ctx, {.servers = "127.0.0.1:5353", .timeout = 500ms});
  // ------------------------------------------------------------------------------
  CHECK(conn.has_value());
  CHECK(configured.has_value());
  REQUIRE(addrs.has_value());
  CHECK(!addrs->empty());
}
} // namespace readme_names

TEST_CASE("README: the names example runs") {
  io_context ctx;
  // Nothing answers on 127.0.0.1:9: only /etc/hosts can (the tests never ask
  // the machine's own name servers).
  REQUIRE(configure_resolver(ctx, {.servers = "127.0.0.1:9", .timeout = 100ms, .tries = 1}));
  auto listener = test_support::loopback_listener(ctx);
  ctx.run(readme_names::examples(ctx, std::to_string(listener.local_endpoint().port())));
}
