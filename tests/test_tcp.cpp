#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include <csignal>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using couring::endpoint;
using couring::io_context;
using couring::result;
using couring::task;
using couring::tcp_listener;
using couring::tcp_stream;
using namespace test_support;

// Streams are bound by name (tcp_stream& client = pair.client), not with a
// structured binding: clang 14 cannot capture structured bindings in lambdas.

namespace {

task<result<tcp_stream>> connect_to(io_context& ctx, const tcp_listener& l) {
  co_return co_await tcp_stream::connect(ctx, l.local_endpoint());
}

// Echoes until end of stream.
task<void> echo(tcp_stream s) {
  std::vector<std::byte> buf(16 * 1024);
  for (;;) {
    auto n = co_await s.read(buf);
    if (!n || *n == 0)
      co_return;
    if (!co_await s.write_all(std::span(buf).first(*n)))
      co_return;
  }
}

} // namespace

TEST_CASE("listener on port 0 reports the port the kernel chose") {
  io_context ctx;
  auto l = loopback_listener(ctx);
  CHECK(l.is_open());
  CHECK(l.local_endpoint().port() != 0);
  CHECK(l.local_endpoint().to_string().rfind("127.0.0.1:", 0) == 0);
}

TEST_CASE("bind to a port in use is EADDRINUSE; reuse_port shares it") {
  io_context ctx;
  auto a = loopback_listener(ctx);
  auto b = tcp_listener::bind(ctx, a.local_endpoint());
  REQUIRE_FALSE(b);
  CHECK(b.error() == std::errc::address_in_use);

  auto c = loopback_listener(ctx, {.reuse_port = true});
  auto d = tcp_listener::bind(ctx, c.local_endpoint(), {.reuse_port = true});
  CHECK(d);
}

TEST_CASE("bind of an unspecified endpoint fails cleanly") {
  io_context ctx;
  auto l = tcp_listener::bind(ctx, endpoint{});
  CHECK_FALSE(l);
}

TEST_CASE("a round trip over loopback") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<std::string> {
    auto client = co_await connect_to(ctx, listener);
    REQUIRE(client);
    auto accepted = co_await listener.accept();
    REQUIRE(accepted);
    CHECK(accepted->remote_endpoint()->port() == client->local_endpoint()->port());

    require_ok(co_await client->write_all(bytes("ping")));
    std::byte buf[4];
    require_ok(co_await accepted->read_exactly(buf));
    CHECK(text(buf) == "ping");

    auto n = co_await accepted->write(bytes("pong!"));
    REQUIRE(n);
    CHECK(*n == 5);
    std::byte reply[5];
    require_ok(co_await client->read_exactly(reply));
    co_return text(reply);
  };
  CHECK(ctx.run(body()) == "pong!");
}

TEST_CASE("a round trip over IPv6 loopback") {
  io_context ctx;
  auto listener = tcp_listener::bind(ctx, endpoint::ipv6_loopback(0));
  if (!listener) {
    // Only a machine without ::1 (IPv6 disabled) is a reason; any other
    // error is a failure.
    const auto e = listener.error();
    REQUIRE(
        (e == std::errc::address_not_available || e == std::errc::address_family_not_supported));
    declare_skip("no IPv6 loopback (::1) here: " + e.message());
    return;
  }
  auto body = [&]() -> task<std::string> {
    auto client = co_await tcp_stream::connect(ctx, listener->local_endpoint());
    REQUIRE(client);
    auto accepted = co_await listener->accept();
    REQUIRE(accepted);
    require_ok(co_await client->write_all(bytes("six")));
    std::byte buf[3];
    require_ok(co_await accepted->read_exactly(buf));
    co_return text(buf);
  };
  CHECK(ctx.run(body()) == "six");
}

TEST_CASE("connect binds the local endpoint it is given") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto probe = loopback_listener(ctx); // a free port to bind the client to
  const endpoint local = probe.local_endpoint();
  probe.close();
  auto body = [&]() -> task<void> {
    auto client = co_await tcp_stream::connect(ctx, listener.local_endpoint(), {.local = local});
    REQUIRE(client);
    CHECK(*client->local_endpoint() == local);
    auto accepted = co_await listener.accept();
    REQUIRE(accepted);
    CHECK(*accepted->remote_endpoint() == local);
  };
  ctx.run(body());
}

TEST_CASE("read returns 0 at end of stream, after the data") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    require_ok(co_await client.write_all(bytes("last words")));
    client.close();
    std::string got;
    std::byte buf[3];
    for (;;) {
      auto n = co_await accepted.read(buf);
      REQUIRE(n);
      if (*n == 0)
        break;
      got += text(std::span(buf).first(*n));
    }
    CHECK(got == "last words");
    auto again = co_await accepted.read(buf);
    REQUIRE(again);
    CHECK(*again == 0);
  };
  ctx.run(body());
}

TEST_CASE("shutdown_write half-closes: the peer sees end of stream and can still answer") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    require_ok(co_await client.write_all(bytes("question")));
    REQUIRE(client.shutdown_write());
    std::byte q[8];
    require_ok(co_await accepted.read_exactly(q));
    std::byte more[1];
    auto eof = co_await accepted.read(more);
    REQUIRE(eof);
    CHECK(*eof == 0);
    require_ok(co_await accepted.write_all(bytes("answer")));
    std::byte a[6];
    require_ok(co_await client.read_exactly(a));
    CHECK(text(a) == "answer");
  };
  ctx.run(body());
}

TEST_CASE("read_exactly reports an early end of stream as an error") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    require_ok(co_await client.write_all(bytes("abc")));
    client.close();
    std::byte buf[10];
    auto awaitable = accepted.read_exactly(buf);
    auto r = co_await awaitable;
    REQUIRE_FALSE(r);
    CHECK(r.error() == couring::error::end_of_stream);
    CHECK(awaitable.transferred() == 3);
  };
  ctx.run(body());
}

TEST_CASE("connect keeps its own copy of the endpoint (the task starts later)") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::string text_ep = listener.local_endpoint().to_string();
  // The endpoint argument is a temporary, gone long before the task runs.
  task<result<tcp_stream>> later = tcp_stream::connect(ctx, endpoint::parse(text_ep).value());
  std::vector<task<result<tcp_stream>>> several;
  for (int i = 0; i < 3; ++i)
    several.push_back(tcp_stream::connect(ctx, endpoint::parse(text_ep).value()));
  auto body = [&]() -> task<int> {
    int ok = (co_await std::move(later)).has_value() ? 1 : 0;
    for (auto& r : co_await couring::when_all(std::move(several)))
      ok += r.has_value() ? 1 : 0;
    co_return ok;
  };
  CHECK(ctx.run(body()) == 4);
}

TEST_CASE("connect to a closed port gives ECONNREFUSED") {
  io_context ctx;
  endpoint closed_port;
  {
    auto l = loopback_listener(ctx);
    closed_port = l.local_endpoint();
  }
  auto r = ctx.run(tcp_stream::connect(ctx, closed_port));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::connection_refused);
}

TEST_CASE("connect with a local endpoint already in use fails with EADDRINUSE") {
  io_context ctx;
  auto target = loopback_listener(ctx);
  auto busy = loopback_listener(ctx, {.reuse_address = false});
  auto r = ctx.run(tcp_stream::connect(ctx, target.local_endpoint(),
                                       {.local = busy.local_endpoint(), .reuse_address = false}));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::address_in_use);
}

TEST_CASE("writing to a reset peer gives EPIPE or ECONNRESET, never SIGPIPE") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<std::error_code> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    // SO_LINGER with a zero timeout: close sends RST instead of FIN.
    linger lg{.l_onoff = 1, .l_linger = 0};
    REQUIRE(::setsockopt(accepted.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    accepted.close();
    (void)co_await couring::nop(ctx); // let the close reach the kernel
    std::vector<std::byte> data(4096, std::byte{1});
    for (int i = 0; i < 100; ++i) {
      auto n = co_await client.write(data);
      if (!n)
        co_return n.error();
    }
    co_return std::error_code{};
  };
  const auto ec = ctx.run(body());
  INFO("error: " << ec.message());
  CHECK((ec == std::errc::broken_pipe || ec == std::errc::connection_reset));
}

TEST_CASE("reading from a reset peer gives ECONNRESET") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<std::error_code> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    linger lg{.l_onoff = 1, .l_linger = 0};
    REQUIRE(::setsockopt(accepted.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    accepted.close();
    std::byte b[8];
    auto n = co_await client.read(b);
    co_return n.error();
  };
  CHECK(ctx.run(body()) == std::errc::connection_reset);
}

TEST_CASE("write can be short; write_all sends everything") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    // Far more than the socket buffers hold while nobody reads: the send
    // returns what fitted.
    const auto big = pattern(1, 32 << 20);
    auto n = co_await client.write(big);
    REQUIRE(n);
    CHECK(*n > 0);
    CHECK(*n < big.size());
    // The rest goes through write_all while the other side drains.
    const auto rest = std::span(big).subspan(*n);
    auto reader = [&](tcp_stream& s) -> task<bool> {
      std::vector<std::byte> got(big.size());
      auto r = co_await s.read_exactly(got);
      co_return r&& got == big;
    };
    auto writer = [&](tcp_stream& s) -> task<bool> {
      co_return (co_await s.write_all(rest)).has_value();
    };
    bool wrote = false;
    auto write_task = [&]() -> task<void> {
      wrote = co_await writer(client);
    };
    ctx.spawn(write_task());
    require_ok(co_await reader(accepted));
    while (!wrote)
      (void)co_await couring::nop(ctx);
  };
  ctx.run(body());
}

// An awaitable built over memory that held anything (a reused frame): what
// an empty transfer, which never reaches the kernel, reports must not depend
// on it. (meson test's MALLOC_PERTURB_ filled frames with such bytes.)
template <class Awaitable>
result<void> await_in_dirty_memory(Awaitable&& a, unsigned char fill) {
  alignas(Awaitable) unsigned char storage[sizeof(Awaitable)];
  std::memset(storage, fill, sizeof storage);
  auto* in_place = new (storage) Awaitable(std::move(a));
  result<void> r = in_place->await_ready() ? in_place->await_resume() : result<void>{};
  const bool ready = in_place->await_ready();
  in_place->~Awaitable();
  REQUIRE(ready);
  return r;
}

TEST_CASE("write_all and read_exactly of nothing succeed at once, whatever their memory held") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    for (unsigned char fill : {0x00, 0xa5, 0xff}) {
      auto w = await_in_dirty_memory(pair.client.write_all(std::span<const std::byte>{}), fill);
      require_ok(w);
      auto r = await_in_dirty_memory(pair.server.read_exactly(std::span<std::byte>{}), fill);
      require_ok(r);
    }
    // And awaited as usual.
    auto w = co_await pair.client.write_all(std::span<const std::byte>{});
    require_ok(w);
    auto r = co_await pair.server.read_exactly(std::span<std::byte>{});
    require_ok(r);
  };
  ctx.run(body());
}

TEST_CASE("64 MiB through write_all and read_exactly, every byte checked") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  constexpr std::size_t total = 64u << 20;
  const auto data = pattern(64, total);
  bool sent = false;
  auto sender = [&](tcp_stream s) -> task<void> {
    // In uneven pieces, so that chunk boundaries fall anywhere.
    std::size_t off = 0, piece = 1;
    while (off < total) {
      const std::size_t n = std::min(piece, total - off);
      require_ok(co_await s.write_all(std::span(data).subspan(off, n)));
      off += n;
      piece = piece * 3 + 7;
      if (piece > (8u << 20))
        piece = 1;
    }
    sent = true;
  };
  auto body = [&]() -> task<bool> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    ctx.spawn(sender(std::move(client)));
    std::vector<std::byte> got(total);
    require_ok(co_await accepted.read_exactly(got));
    std::byte extra[1];
    auto eof = co_await accepted.read(extra); // sender closed after the last byte
    CHECK((eof && *eof == 0));
    co_return got == data;
  };
  CHECK(ctx.run(body()));
  CHECK(sent);
}

TEST_CASE("1,000 concurrent connections on one io_context, every byte checked") {
  raise_fd_limit();
  io_context ctx;
  auto listener = loopback_listener(ctx);
  constexpr int clients = 1000;
  constexpr std::size_t message = 3000;
  int verified = 0, failed = 0, served = 0;

  auto server = [&]() -> task<void> {
    for (int i = 0; i < clients; ++i) {
      auto s = co_await listener.accept();
      REQUIRE(s);
      ++served;
      ctx.spawn(echo(std::move(*s)));
    }
  };
  auto client = [&](int id) -> task<void> {
    auto s = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    if (!s) {
      ++failed;
      co_return;
    }
    const auto out = pattern(static_cast<std::uint64_t>(id), message);
    std::vector<std::byte> in(message);
    // Write in two halves with the read in between, so that every
    // connection has operations in flight at the same time as the others.
    if (!co_await s->write_all(std::span(out).first(message / 2)) ||
        !co_await s->read_exactly(std::span(in).first(message / 2)) ||
        !co_await s->write_all(std::span(out).subspan(message / 2)) ||
        !co_await s->read_exactly(std::span(in).subspan(message / 2))) {
      ++failed;
      co_return;
    }
    if (in == out)
      ++verified;
    else
      ++failed;
  };
  ctx.spawn(server());
  for (int i = 0; i < clients; ++i)
    ctx.spawn(client(i));
  ctx.run();
  CHECK(served == clients);
  CHECK(failed == 0);
  CHECK(verified == clients);
}

TEST_CASE("closing a stream cancels a read pending on it") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<std::error_code> {
    auto pair = co_await connect_pair(ctx, listener);
    // pair.client stays open: the read waits for its data.
    tcp_stream& accepted = pair.server;
    std::error_code seen;
    bool done = false;
    auto reader = [&]() -> task<void> {
      std::byte b[8];
      auto r = co_await accepted.read(b);
      seen = r ? std::error_code{} : r.error();
      done = true;
    };
    ctx.spawn(reader());
    (void)co_await couring::nop(ctx); // the read is in flight now
    accepted.close();
    while (!done)
      (void)co_await couring::nop(ctx);
    co_return seen;
  };
  CHECK(ctx.run(body()) == std::errc::operation_canceled);
}

TEST_CASE("closing a listener cancels a pending accept") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<std::error_code> {
    std::error_code seen;
    bool done = false;
    auto acceptor = [&]() -> task<void> {
      auto r = co_await listener.accept();
      seen = r ? std::error_code{} : r.error();
      done = true;
    };
    ctx.spawn(acceptor());
    (void)co_await couring::nop(ctx);
    listener.close();
    while (!done)
      (void)co_await couring::nop(ctx);
    co_return seen;
  };
  CHECK(ctx.run(body()) == std::errc::operation_canceled);
}

TEST_CASE("a stream destroyed outside the loop still closes its socket") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto pair = [&]() -> task<std::pair<tcp_stream, tcp_stream>> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    co_return std::pair{std::move(client), std::move(accepted)};
  };
  auto [client, accepted] = ctx.run(pair());
  client = tcp_stream(); // destroys the old stream while run() is not turning
  char c;
  // The peer sees end of stream: the close reached the kernel.
  CHECK(::recv(accepted.native_handle(), &c, 1, 0) == 0);
}

TEST_CASE("a reader task and a writer task may share a stream") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<bool> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    const auto data = pattern(3, 1 << 20);
    std::vector<std::byte> got(data.size());
    auto echo_back = [&]() -> task<void> { // full duplex on `accepted`
      std::vector<std::byte> buf(8192);
      for (;;) {
        auto n = co_await accepted.read(buf);
        if (!n || *n == 0)
          co_return;
        require_ok(co_await accepted.write_all(std::span(buf).first(*n)));
      }
    };
    auto writer = [&]() -> task<void> {
      require_ok(co_await client.write_all(data));
      require_ok(client.shutdown_write());
    };
    ctx.spawn(echo_back());
    ctx.spawn(writer()); // writes on `client` while this task reads it
    require_ok(co_await client.read_exactly(got));
    co_return got == data;
  };
  CHECK(ctx.run(body()));
}

TEST_CASE("write_all cancelled midway: transferred() is what the peer received") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    // Far more than the socket buffers hold while nobody reads: write_all is
    // still at it when the deadline cancels it.
    const auto big = pattern(11, 64 << 20);
    std::size_t moved = 0;
    auto writer = [&]() -> task<result<void>> {
      auto w = client.write_all(big);
      auto r = co_await w;
      moved = w.transferred();
      co_return r;
    };
    auto r = co_await couring::with_timeout(writer(), std::chrono::milliseconds(100));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::timed_out);
    CHECK(moved > 0);
    CHECK(moved < big.size());
    // Everything the kernel took is delivered, and nothing more.
    require_ok(client.shutdown_write());
    std::vector<std::byte> got;
    std::vector<std::byte> buf(1 << 16);
    for (;;) {
      auto n = co_await accepted.read(buf);
      require_ok(n);
      if (*n == 0)
        break;
      got.insert(got.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(*n));
    }
    CHECK(got.size() == moved);
    CHECK(std::equal(got.begin(), got.end(), big.begin()));
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("read_exactly cancelled midway: transferred() is what it received, the rest follows") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    const auto data = pattern(12, 1000);
    // Only the first 300 bytes come before the deadline.
    require_ok(co_await client.write_all(std::span(data).first(300)));
    std::vector<std::byte> got(1000);
    std::size_t received = 0;
    auto reader = [&]() -> task<result<void>> {
      auto rx = accepted.read_exactly(got);
      auto r = co_await rx;
      received = rx.transferred();
      co_return r;
    };
    std::stop_source stop;
    auto stopper = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, std::chrono::milliseconds(50));
      stop.request_stop();
    };
    ctx.spawn(stopper());
    auto r = co_await couring::with_stop_token(reader(), stop.get_token());
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::operation_canceled);
    CHECK(received == 300);
    CHECK(std::equal(got.begin(), got.begin() + 300, data.begin()));
    // The cancelled request consumed nothing more: the rest arrives whole.
    require_ok(co_await client.write_all(std::span(data).subspan(300)));
    require_ok(co_await accepted.read_exactly(std::span(got).subspan(300)));
    CHECK(got == data);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("a read cancelled in flight, then data sent: the next read gets every byte") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& accepted = pair.server;
    for (int round = 0; round < 20; ++round) {
      std::stop_source stop;
      auto stopper = [&]() -> task<void> {
        (void)co_await couring::sleep_for(ctx, std::chrono::milliseconds(2));
        stop.request_stop();
      };
      ctx.spawn(stopper());
      std::byte buf[64];
      auto r = co_await couring::with_stop_token(accepted.read(buf), stop.get_token());
      REQUIRE_FALSE(r);
      CHECK(r.error() == std::errc::operation_canceled);
      const auto data = pattern(static_cast<std::uint64_t>(round), 64);
      require_ok(co_await client.write_all(data));
      std::byte got[64];
      require_ok(co_await accepted.read_exactly(got));
      CHECK(std::equal(std::begin(got), std::end(got), data.begin()));
    }
  };
  ctx.run(body());
}

namespace {
int no_delay_of(int fd) {
  int v = -1;
  socklen_t len = sizeof v;
  REQUIRE(::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) == 0);
  return v != 0 ? 1 : 0;
}
} // namespace

TEST_CASE("TCP_NODELAY: connect_options.no_delay and set_no_delay") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto plain = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    REQUIRE(plain);
    CHECK(no_delay_of(plain->native_handle()) == 0);
    auto fast = co_await tcp_stream::connect(ctx, listener.local_endpoint(), {.no_delay = true});
    REQUIRE(fast);
    CHECK(no_delay_of(fast->native_handle()) == 1);

    auto accepted = co_await listener.accept();
    REQUIRE(accepted);
    require_ok(accepted->set_no_delay(true));
    CHECK(no_delay_of(accepted->native_handle()) == 1);
    require_ok(accepted->set_no_delay(false));
    CHECK(no_delay_of(accepted->native_handle()) == 0);
    accepted->close();
    CHECK_FALSE(accepted->set_no_delay(true)); // an error, not a crash
  };
  ctx.run(body());
}

TEST_CASE("write(string_view) sends the text") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    auto n = co_await pair.client.write(std::string_view("hello, view"));
    require_ok(n);
    CHECK(*n == 11);
    std::byte got[11];
    require_ok(co_await pair.server.read_exactly(got));
    CHECK(text(got) == "hello, view");
  };
  ctx.run(body());
}

TEST_CASE("endpoints of a closed or empty stream are errors, not crashes") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    REQUIRE(client.remote_endpoint());
    client.close();
    auto remote = client.remote_endpoint();
    auto local = client.local_endpoint();
    CHECK_FALSE(remote);
    CHECK_FALSE(local);
    CHECK(remote.error() == std::errc::bad_file_descriptor);
    tcp_stream empty;
    CHECK_FALSE(empty.remote_endpoint());
  };
  ctx.run(body());
}
