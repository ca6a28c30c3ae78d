// The README's examples, compiled and run, so that they stay true.

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <stop_token>

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

namespace readme_files {
task<void> examples(io_context& ctx, tcp_stream& stream) {
  // --- README "Files" ------------------------------------------------------------
  // Open by path (IORING_OP_OPENAT); read and write at offsets; any number of
  // requests in flight at once. Errors are values carrying the errno.
  auto f = co_await file::open(ctx, "data.bin", {.read = true, .write = true, .create = true});
  if (!f)
    throw file_error(f.error(), "open", "data.bin"); // "couring: open data.bin: <reason>"
  std::string_view header = "header";
  std::byte block[4096];
  (co_await f->write_all_at(std::as_bytes(std::span(header)), 0)).value(); // throws if it failed
  auto n = co_await f->read_at(block, 0);                           // may be short; 0 at the end
  auto whole = co_await f->read_exactly_at(std::span(block, 6), 0); // error::end_of_file if short
  (co_await f->sync_data()).value();                                // IORING_OP_FSYNC
  auto size = co_await f->size();                                   // IORING_OP_STATX

  // Whole files. write_file replaces atomically: a temporary in the same
  // directory, fsync, rename over the target, fsync of the directory.
  std::string_view config = "{}";
  auto written = co_await write_file(ctx, "config.json", std::as_bytes(std::span(config)));
  auto bytes = co_await read_file(ctx, "config.json"); // result<std::vector<std::byte>>
  // --- README "Pipes and send_file" ----------------------------------------------
  // Both ends are streams (IORING_OP_READ/WRITE, since a pipe is not a socket).
  auto [reader, writer] = pipe(ctx).value();
  auto piped = co_await writer.write_all(std::string_view("through a pipe"));

  // A file to a socket without copying through user space: file -> pipe ->
  // socket with IORING_OP_SPLICE. Holds the stream's write side throughout.
  auto sending = send_file(stream, *f, 0, *size);
  auto sent = co_await sending; // bytes sent: *size on success
  if (!sent) {                  /* EPIPE, ECONNRESET, error::end_of_file (the file shrank) */
    std::size_t so_far = sending.transferred();
    (void)so_far;
  }
  // ------------------------------------------------------------------------------
  CHECK(n.value_or(0) == 6);
  CHECK(whole.has_value());
  CHECK(test_support::text(std::span(block, 6)) == "header");
  CHECK(size.value_or(0) == 6);
  CHECK(written.has_value());
  CHECK(test_support::text(bytes.value()) == "{}");
  CHECK(piped.has_value());
  std::byte through[14];
  test_support::require_ok(co_await reader.read_exactly(through));
  CHECK(test_support::text(through) == "through a pipe");
  CHECK(sent.value_or(0) == 6);
}

task<int> signals_example(io_context& ctx) {
  // --- README "Signals" ----------------------------------------------------------
  // Blocks SIGINT and SIGTERM in this thread (pthread_sigmask) and reads them
  // from a signalfd through the ring. Create it before starting other threads:
  // they inherit the mask (a thread that does not block them would take them).
  signal_set signals(ctx, {SIGINT, SIGTERM});
  ::raise(SIGTERM);                   // (not in the README: someone sends it; blocked, it waits)
  auto sig = co_await signals.wait(); // result<int>: SIGINT or SIGTERM
  // close() (or the destructor) ends a pending wait with operation_canceled and
  // unblocks what the set blocked.
  // ------------------------------------------------------------------------------
  co_return sig.value_or(0);
}
} // namespace readme_files

TEST_CASE("README: the files, pipes and send_file examples run") {
  char dir[] = "/tmp/couring-readme-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  char* old_cwd = ::getcwd(nullptr, 0);
  REQUIRE(::chdir(dir) == 0);
  {
    io_context ctx;
    auto listener = test_support::loopback_listener(ctx);
    auto body = [&]() -> task<void> {
      auto [client, server] = co_await test_support::connect_pair(ctx, listener);
      co_await readme_files::examples(ctx, server);
      std::byte got[6];
      test_support::require_ok(co_await client.read_exactly(got));
      CHECK(test_support::text(got) == "header");
    };
    ctx.run(body());
  }
  ::unlink("data.bin");
  ::unlink("config.json");
  REQUIRE(::chdir(old_cwd) == 0);
  std::free(old_cwd);
  ::rmdir(dir);
}

TEST_CASE("README: the signals example runs") {
  io_context ctx;
  CHECK(ctx.run(readme_files::signals_example(ctx)) == SIGTERM);
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
