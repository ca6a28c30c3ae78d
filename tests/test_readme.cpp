// The README's examples, compiled and run, so that they stay true.

#include <catch2/catch.hpp>

#include <chrono>
#include <stop_token>
#include <string>
#include <vector>

#include <unistd.h>

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

namespace readme_udp {
// --- README "UDP" (main() replaced by the test below) ----------------------------
// Each datagram back to its sender.
task<void> udp_echo(udp_socket& socket) {
  std::byte buf[2048];
  for (;;) {
    auto d = co_await socket.receive_from(buf);
    if (!d)
      co_return; // closed, cancelled, or an error
    if (d->truncated)
      continue; // longer than buf: only d->size bytes arrived, of d->datagram_size
    (void)co_await socket.send_to(std::span(buf, d->size), d->sender);
  }
}
} // namespace readme_udp

TEST_CASE("README: the UDP echo echoes, and skips truncated datagrams") {
  io_context ctx;
  auto socket = udp_socket::bind(ctx, endpoint::parse("127.0.0.1:0").value()).value();
  const endpoint ep = socket.local_endpoint().value();
  ctx.spawn(readme_udp::udp_echo(socket));
  auto client = [&]() -> task<std::string> {
    auto c = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
    std::vector<std::byte> too_big(3000);
    test_support::require_ok(co_await c.send_to(too_big, ep)); // not echoed
    test_support::require_ok(co_await c.send_to(std::string_view("echo me"), ep));
    std::byte buf[64];
    auto d = co_await with_timeout(c.receive_from(buf), 2s);
    test_support::require_ok(d);
    socket.close(); // ends udp_echo
    co_return test_support::text(std::span(buf, d->size));
  };
  CHECK(ctx.run(client()) == "echo me");
}

namespace readme_unix {
// --- README "Unix domain sockets" (main() replaced by the test below) ------------
// Application code written once: it serves TCP and Unix connections alike.
task<void> echo(stream& s) {
  std::byte buf[4096];
  for (;;) {
    auto n = co_await s.read(buf);
    if (!n || *n == 0)
      co_return;
    if (!co_await s.write_all(std::span(buf, *n)))
      co_return;
  }
}

task<void> connection(unix_stream s) {
  auto who = s.peer_credentials(); // pid, uid, gid of the client (SO_PEERCRED)
  if (who && who->uid == ::getuid())
    co_await echo(s);
}

task<void> serve(io_context& ctx, unix_listener listener) {
  for (;;) {
    auto conn = co_await listener.accept();
    if (conn)
      ctx.spawn(connection(std::move(*conn)));
  }
}
} // namespace readme_unix

TEST_CASE("README: the Unix socket echo echoes, and the same echo serves TCP") {
  io_context ctx;
  const std::string name = "@couring-readme-" + std::to_string(::getpid());
  auto listener = unix_listener::bind(ctx, name, {.remove_stale = true}).value();
  ctx.spawn(readme_unix::serve(ctx, std::move(listener)));
  auto tcp = test_support::loopback_listener(ctx);
  auto client = [&]() -> task<std::string> {
    auto s = co_await unix_stream::connect(ctx, unix_endpoint::parse(name).value());
    test_support::require_ok(s);
    test_support::require_ok(co_await s->write_all(std::string_view("unix")));
    std::byte buf[4];
    test_support::require_ok(co_await s->read_exactly(buf));
    // The same echo(stream&) on a TCP connection.
    auto [c, server] = co_await test_support::connect_pair(ctx, tcp);
    ctx.spawn([](tcp_stream t) -> task<void> {
      co_await readme_unix::echo(t);
    }(std::move(server)));
    test_support::require_ok(co_await c.write_all(std::string_view("tcp!")));
    std::byte tbuf[4];
    test_support::require_ok(co_await c.read_exactly(tbuf));
    co_return test_support::text(buf) + test_support::text(tbuf);
  };
  CHECK(ctx.run(client()) == "unixtcp!");
}
