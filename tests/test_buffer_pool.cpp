// buffer_pool and stream::receive(pool): order and completeness under
// starvation, lease lifetimes, cancellation and close with the multishot
// receive armed, CQ overflow, floods and resets.

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stop_token>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using couring::buffer_lease;
using couring::buffer_pool;
using couring::io_context;
using couring::result;
using couring::task;
using couring::tcp_stream;

namespace {

// Receives until end of stream, checking every byte against pattern(seed);
// returns the byte count (or -1 on an error or a wrong byte).
// hold: keep each lease across a short sleep, so that many streams hold
// buffers at once (starvation); starved counts receives that found the pool
// empty.
task<long> receive_all(tcp_stream& s, buffer_pool& pool, std::uint64_t seed, bool hold = false,
                       int* starved = nullptr) {
  std::size_t at = 0;
  for (;;) {
    auto lease = co_await s.receive(pool);
    if (!lease) {
      UNSCOPED_INFO("receive: " << lease.error().message());
      co_return -1;
    }
    if (lease->empty())
      co_return static_cast<long>(at);
    for (std::byte b : lease->data())
      if (b != pattern_byte(seed, at++))
        co_return -1;
    if (starved != nullptr && pool.available() == 0)
      ++*starved;
    if (hold)
      (void)co_await couring::sleep_for(s.context(), 1ms);
  }
}

task<void> send_and_shut(tcp_stream& s, std::vector<std::byte> data) {
  require_ok(co_await s.write_all(data));
  require_ok(s.shutdown_write());
}

} // namespace

TEST_CASE("receive delivers chunks in order, then end of stream") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 1024);
  CHECK(pool.count() == 4);
  CHECK(pool.buffer_size() == 1024);
  CHECK(pool.available() == 4);
  auto listener = loopback_listener(ctx);
  long got = 0;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    ctx.spawn(send_and_shut(p.client, pattern(7, 100'000)));
    got = co_await receive_all(p.server, pool, 7);
    // End of stream stays end of stream.
    auto again = co_await p.server.receive(pool);
    require_ok(again);
    CHECK(again->empty());
  };
  ctx.run(body());
  CHECK(got == 100'000);
  CHECK(pool.available() == 4);
}

TEST_CASE("leases are returned out of order and outlive their stream") {
  io_context ctx;
  // One chunk per buffer (incremental consumption has a test of its own).
  buffer_pool pool(ctx, 4, 64, {.incremental = false});
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    std::vector<buffer_lease> held;
    {
      auto p = co_await connect_pair(ctx, listener);
      std::string collected;
      // Three separate chunks: each write waits until the previous chunk is in.
      for (char c : std::string("abc")) {
        require_ok(co_await p.client.write(std::string(10, c)));
        auto l = co_await p.server.receive(pool);
        require_ok(l);
        collected += text(l->data());
        held.push_back(std::move(*l));
      }
      CHECK(collected == std::string(10, 'a') + std::string(10, 'b') + std::string(10, 'c'));
      CHECK(pool.available() == 1);
      p.server.close();
    } // both streams destroyed; the leases live on
    CHECK(text(held[0].data()) == std::string(10, 'a'));
    CHECK(text(held[2].data()) == std::string(10, 'c'));
    held[1].release();
    CHECK(held[1].empty());
    CHECK(pool.available() == 2);
    held[2].release();
    held[0] = buffer_lease{};
    CHECK(pool.available() == 4);
  };
  ctx.run(body());
}

TEST_CASE("1,000 connections share 8 buffers: order kept, nothing lost, nothing closed") {
  raise_fd_limit();
  io_context ctx;
  buffer_pool pool(ctx, 8, 2048);
  auto listener = loopback_listener(ctx, {.backlog = 1024});
  constexpr int connections = 1000;
  constexpr std::size_t per_connection = 20'000; // ~10 buffers each, > the pool
  int complete = 0;
  int failed = 0;
  int starved = 0;
  auto server_side = [&](tcp_stream s, std::uint64_t seed) -> task<void> {
    const long n = co_await receive_all(s, pool, seed, true, &starved);
    if (n == static_cast<long>(per_connection))
      ++complete;
    else
      ++failed;
  }; // s closes here: the client then reads end of stream
  auto client_side = [&](tcp_stream c, std::uint64_t seed) -> task<void> {
    co_await send_and_shut(c, pattern(seed, per_connection));
    std::byte b[1];
    auto n = co_await c.read(b); // until the server is done
    CHECK((n && *n == 0));
  };
  auto body = [&]() -> task<void> {
    for (int i = 0; i < connections; ++i) {
      auto p = co_await connect_pair(ctx, listener);
      const auto seed = 1000 + static_cast<std::uint64_t>(i);
      ctx.spawn(server_side(std::move(p.server), seed));
      ctx.spawn(client_side(std::move(p.client), seed));
    }
  };
  ctx.spawn(body());
  ctx.run();
  CHECK(starved > 100); // the pool really was empty, often
  CHECK(failed == 0);
  // With INC where the kernel has it (the default).
  CHECK(pool.incremental() == (ctx.features().backend == couring::backend::io_uring));
  CHECK(complete == connections);
  CHECK(pool.available() == 8);
}

TEST_CASE("close with the multishot receive armed: the waiting receive ends, the fd goes") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 256);
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  std::optional<result<buffer_lease>> got;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    auto waiting = [&]() -> task<void> {
      got.emplace(co_await p.server.receive(pool));
    };
    ctx.spawn(waiting());
    (void)co_await couring::sleep_for(ctx, 20ms); // the receive is armed and waits
    REQUIRE(!got.has_value());
    p.server.close();
    (void)co_await couring::sleep_for(ctx, 20ms);
    REQUIRE(got.has_value());
    CHECK(is(got->error(), std::errc::operation_canceled));
    // A receive on the closed stream fails the same way.
    auto after = co_await p.server.receive(pool);
    CHECK(is(after.error(), std::errc::operation_canceled));
  };
  ctx.run(body());
  CHECK(open_fd_count() == fds_before);
  CHECK(pool.available() == 4);
  // The receive that was armed asked for bundles and INC where the kernel has them.
  CHECK(pool.bundled() == (ctx.features().backend == couring::backend::io_uring));
}

TEST_CASE("close with chunks queued gives their buffers back") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 256, {.incremental = false, .bundle = false});
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    require_ok(co_await p.client.write_all(bytes("x")));
    auto first = co_await p.server.receive(pool); // arms the multishot
    require_ok(first);
    require_ok(co_await p.client.write_all(bytes(std::string(600, 'x')))); // 3 buffers
    (void)co_await couring::sleep_for(ctx, 20ms);
    CHECK(pool.available() == 0); // one leased, three queued: nobody took them
    p.server.close();
    // They go back once the cancelled request's last CQE is in.
    (void)co_await couring::sleep_for(ctx, 20ms);
    CHECK(pool.available() == 3);
  };
  ctx.run(body());
  CHECK(pool.available() == 4);
}

TEST_CASE("a cancelled receive loses nothing: the next receive gets the data") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 256);
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    // Timed out while waiting: nothing had arrived.
    auto r1 = co_await couring::with_timeout(p.server.receive(pool), 20ms);
    CHECK(is(r1.error(), std::errc::timed_out));
    // Data arrives while nobody waits; a receive whose stop was requested
    // before it started ends at once and leaves it queued.
    require_ok(co_await p.client.write_all(bytes("hello")));
    (void)co_await couring::sleep_for(ctx, 20ms);
    std::stop_source stop;
    stop.request_stop();
    auto r2 = co_await couring::with_stop_token(p.server.receive(pool), stop.get_token());
    CHECK(is(r2.error(), std::errc::operation_canceled));
    auto r3 = co_await p.server.receive(pool);
    require_ok(r3);
    CHECK(text(r3->data()) == "hello");
    // A stop requested while the receive waits ends it; then data again.
    std::stop_source later;
    auto stopper = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 10ms);
      later.request_stop();
      (void)co_await couring::sleep_for(ctx, 10ms);
      require_ok(co_await p.client.write_all(bytes("world")));
    };
    ctx.spawn(stopper());
    auto r4 = co_await couring::with_stop_token(p.server.receive(pool), later.get_token());
    CHECK(is(r4.error(), std::errc::operation_canceled));
    auto r5 = co_await couring::with_timeout(p.server.receive(pool), 5s);
    require_ok(r5);
    CHECK(text(r5->data()) == "world");
  };
  ctx.run(body());
  CHECK(pool.available() == 4);
}

TEST_CASE("misuse: a read on a receiving stream, a second pool, moved-from streams") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 256);
  buffer_pool other(ctx, 2, 256);
  CHECK(pool.group_id() != other.group_id());
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    auto waiting = [&]() -> task<result<buffer_lease>> {
      co_return co_await p.server.receive(pool);
    };
    auto w = waiting();
    std::optional<result<buffer_lease>> got;
    auto keeper = [&]() -> task<void> {
      got.emplace(co_await std::move(w));
    };
    ctx.spawn(keeper());
    (void)co_await couring::sleep_for(ctx, 10ms);
    bool threw = false;
    try {
      auto r = co_await p.server.receive(other);
      (void)r;
    } catch (const std::logic_error&) {
      threw = true;
    }
    CHECK(threw);
    // A read queued behind the pool receive fails with invalid_argument
    // once data comes (the stream reads through its pool).
    std::byte buf[16];
    auto reader = [&]() -> task<result<std::size_t>> {
      co_return co_await p.server.read(buf);
    };
    std::optional<result<std::size_t>> read_result;
    auto read_keeper = [&, t = reader()]() mutable -> task<void> {
      read_result.emplace(co_await std::move(t));
    };
    ctx.spawn(read_keeper());
    (void)co_await couring::sleep_for(ctx, 10ms);
    require_ok(co_await p.client.write_all(bytes("data")));
    (void)co_await couring::sleep_for(ctx, 20ms);
    REQUIRE(got.has_value());
    require_ok(*got);
    CHECK(text((*got)->data()) == "data");
    REQUIRE(read_result.has_value());
    CHECK(is(read_result->error(), std::errc::invalid_argument));
    tcp_stream moved = std::move(p.server);
    auto r = co_await p.server.receive(pool);
    CHECK(r.error() == std::error_code(EBADF, std::system_category()));
  };
  ctx.run(body());
}

TEST_CASE("a pool destroyed while streams receive: they end, leases stay valid") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    auto pool = std::make_unique<buffer_pool>(ctx, 2, 64);
    require_ok(co_await p.client.write_all(bytes("kept")));
    auto lease = co_await p.server.receive(*pool);
    require_ok(lease);
    std::optional<result<buffer_lease>> got;
    auto waiting = [&]() -> task<void> {
      got.emplace(co_await p.server.receive(*pool));
    };
    ctx.spawn(waiting());
    (void)co_await couring::sleep_for(ctx, 10ms);
    pool.reset();
    (void)co_await couring::sleep_for(ctx, 20ms);
    REQUIRE(got.has_value());
    CHECK(is(got->error(), std::errc::operation_canceled));
    CHECK(text(lease->data()) == "kept"); // the memory lives until the last lease
    lease->release();
  };
  ctx.run(body());
}

TEST_CASE("a peer that resets mid-stream: a clear error after the data") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 256);
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    require_ok(co_await p.client.write_all(bytes("before")));
    (void)co_await couring::sleep_for(ctx, 10ms);
    linger lg{.l_onoff = 1, .l_linger = 0};
    REQUIRE(setsockopt(p.client.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    p.client.close(); // RST
    std::string data;
    std::error_code err;
    for (int i = 0; i < 10; ++i) {
      auto l = co_await couring::with_timeout(p.server.receive(pool), 5s);
      if (!l) {
        err = l.error();
        break;
      }
      if (l->empty())
        break;
      data += text(l->data());
    }
    CHECK((data.empty() || data == "before")); // Linux drops unread data on RST
    CHECK(is(err, std::errc::connection_reset));
  };
  ctx.run(body());
  CHECK(pool.available() == 4);
}

TEST_CASE("CQ overflow (16-entry CQ) while multishot receives run: no lost data, re-armed") {
  io_context ctx(couring::io_context_options{.sq_entries = 8, .cq_entries = 16});
  REQUIRE(ctx.features().cq_entries == 16);
  buffer_pool pool(ctx, 256, 512);
  auto listener = loopback_listener(ctx);
  constexpr int connections = 20;
  constexpr std::size_t per_connection = 64 * 1024; // 128 chunks each at least
  int complete = 0;
  auto server_side = [&](tcp_stream s, std::uint64_t seed) -> task<void> {
    if (co_await receive_all(s, pool, seed) == static_cast<long>(per_connection))
      ++complete;
  };
  auto body = [&]() -> task<void> {
    std::vector<tcp_stream> clients;
    for (int i = 0; i < connections; ++i) {
      auto p = co_await connect_pair(ctx, listener);
      ctx.spawn(server_side(std::move(p.server), 50 + static_cast<std::uint64_t>(i)));
      clients.push_back(std::move(p.client));
    }
    // Every client's data is in the kernel before the receivers get to run:
    // their CQEs come in bursts far larger than the CQ.
    for (int i = 0; i < connections; ++i) {
      const auto data = pattern(50 + static_cast<std::uint64_t>(i), per_connection);
      REQUIRE(::send(clients[i].native_handle(), data.data(), data.size(), 0) ==
              static_cast<ssize_t>(data.size()));
      REQUIRE(::shutdown(clients[i].native_handle(), SHUT_WR) == 0);
    }
    const auto give_up = std::chrono::steady_clock::now() + scaled(60s);
    while (complete < connections && std::chrono::steady_clock::now() < give_up)
      (void)co_await couring::sleep_for(ctx, 5ms);
  };
  ctx.run(body());
  CHECK(complete == connections);
  CHECK(pool.available() == 256);
  // With bundles and INC (the defaults) where the kernel has them.
  const bool uring = ctx.features().backend == couring::backend::io_uring;
  CHECK(pool.bundled() == uring);
  CHECK(pool.incremental() == uring);
}

TEST_CASE("a peer floods while the consumer holds every lease: bounded, nothing lost") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 4096);
  auto listener = loopback_listener(ctx);
  constexpr std::size_t total = 8 * 1024 * 1024;
  bool sent = false;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    int small = 16 * 1024;
    REQUIRE(setsockopt(p.server.native_handle(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    REQUIRE(setsockopt(p.client.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    auto flood = [&]() -> task<void> {
      co_await send_and_shut(p.client, pattern(99, total));
      sent = true;
    };
    ctx.spawn(flood());
    // Take every buffer and hold on to it.
    std::vector<buffer_lease> held;
    std::size_t at = 0;
    bool ok = true;
    while (held.size() < 4) {
      auto l = co_await p.server.receive(pool);
      require_ok(l);
      for (std::byte b : l->data())
        ok = ok && b == pattern_byte(99, at++);
      held.push_back(std::move(*l));
    }
    (void)co_await couring::sleep_for(ctx, scaled(200ms));
    // Nothing more came in: the kernel keeps the rest in the socket, the
    // peer is held back by TCP's window.
    CHECK(pool.available() == 0);
    CHECK(!sent);
    held.clear();
    for (;;) {
      auto l = co_await couring::with_timeout(p.server.receive(pool), scaled(10s));
      require_ok(l);
      if (l->empty())
        break;
      for (std::byte b : l->data())
        ok = ok && b == pattern_byte(99, at++);
    }
    CHECK(ok);
    CHECK(at == total);
    CHECK(sent);
  };
  ctx.run(body());
  CHECK(pool.available() == 4);
}

TEST_CASE("receive on a stream that is not a socket: a clear error") {
  io_context ctx;
  buffer_pool pool(ctx, 2, 64);
  auto body = [&]() -> task<void> {
    auto p = couring::pipe(ctx);
    require_ok(p);
    auto& [reader, writer] = *p;
    require_ok(co_await writer.write_all(bytes("x")));
    auto r = co_await couring::with_timeout(reader.receive(pool), 5s);
    CHECK(r.error() == std::error_code(ENOTSOCK, std::system_category()));
  };
  ctx.run(body());
  CHECK(pool.available() == 2);
}

// --- incremental consumption (IOU_PBUF_RING_INC) and bundles --------------

namespace {
bool on_epoll(io_context& ctx) {
  return ctx.features().backend == couring::backend::epoll;
}

// Sends each message on its own and waits until the server side took it
// (so that every message is a completion of its own), keeping the leases.
task<void> receive_one_each(couring::tcp_stream& server, couring::tcp_stream& client,
                            buffer_pool& pool, std::vector<std::string> msgs,
                            std::vector<buffer_lease>& held) {
  for (const std::string& m : msgs) {
    require_ok(co_await client.write_all(bytes(m)));
    auto l = co_await server.receive(pool);
    require_ok(l);
    REQUIRE(text(l->data()) == m);
    held.push_back(std::move(*l));
  }
}
} // namespace

TEST_CASE("INC: small messages share one buffer; it goes back after its last lease and the "
          "kernel's last use") {
  io_context ctx;
  buffer_pool pool(ctx, 2, 1000); // incremental by default
  if (!pool.incremental()) {
    // The epoll backend refuses IOU_PBUF_RING_INC as an older kernel would.
    CHECK(on_epoll(ctx));
    return;
  }
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::vector<std::string> first, second;
    for (int i = 0; i < 5; ++i)
      first.push_back(std::string(100, static_cast<char>('a' + i)));
    for (int i = 5; i < 10; ++i)
      second.push_back(std::string(100, static_cast<char>('a' + i)));
    std::vector<buffer_lease> held;
    co_await receive_one_each(p.server, p.client, pool, first, held);
    // Five messages, one buffer, back to back; the kernel still fills it.
    for (std::size_t i = 1; i < held.size(); ++i)
      CHECK(held[i].data().data() == held[i - 1].data().data() + 100);
    CHECK(pool.available() == 2);
    // Every lease given back (out of order): the half-full buffer stays in
    // the kernel's hands, and the next message goes on where it stopped.
    const std::byte* const start = held[0].data().data();
    held[3].release();
    held[0].release();
    held.clear();
    CHECK(pool.stats().recycled == 0);
    co_await receive_one_each(p.server, p.client, pool, second, held);
    CHECK(held[0].data().data() == start + 500);
    // Full now: out of the ring, but leased.
    CHECK(pool.available() == 1);
    for (std::size_t i = 0; i < held.size(); ++i)
      CHECK(text(held[i].data()) == second[i]); // nothing overwrote them
    held[4].release();
    held[1].release();
    held[0].release();
    held[3].release();
    CHECK(pool.available() == 1);
    CHECK(pool.stats().recycled == 0);
    held[2].release(); // the last lease
    CHECK(pool.available() == 2);
    CHECK(pool.stats().recycled == 1);
    CHECK(pool.stats().completions == 10);
  };
  ctx.run(body());
}

TEST_CASE("INC: streams interleave in one buffer; chunks keep to their stream, in order") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 64 * 1024);
  if (!pool.incremental()) {
    // Without INC each of the 1,600 held chunks would take a buffer of its
    // own: the test would wait for a buffer forever.
    CHECK(on_epoll(ctx));
    return;
  }
  auto listener = loopback_listener(ctx);
  constexpr int streams = 8;
  constexpr int rounds = 200;
  auto body = [&]() -> task<void> {
    std::vector<couring::tcp_stream> servers, clients;
    for (int i = 0; i < streams; ++i) {
      auto p = co_await connect_pair(ctx, listener);
      servers.push_back(std::move(p.server));
      clients.push_back(std::move(p.client));
    }
    // Every lease held to the end: the kernel packs the streams' messages
    // side by side, and none may run into another.
    std::vector<std::vector<buffer_lease>> held(streams);
    std::vector<std::size_t> at(streams, 0);
    bool ok = true;
    for (int r = 0; r < rounds; ++r) {
      for (int i = 0; i < streams; ++i) {
        const auto msg = pattern(200 + static_cast<std::uint64_t>(i), (r + 1) * 37 % 97 + 1);
        // Each stream's bytes continue its own pattern.
        std::vector<std::byte> cont(msg.size());
        for (std::size_t k = 0; k < cont.size(); ++k)
          cont[k] = pattern_byte(200 + static_cast<std::uint64_t>(i), at[i] + k);
        require_ok(co_await clients[i].write_all(cont));
        std::size_t got = 0;
        while (got < cont.size()) {
          auto l = co_await servers[i].receive(pool);
          require_ok(l);
          REQUIRE(!l->empty());
          got += l->size();
          held[i].push_back(std::move(*l));
        }
        at[i] += got;
      }
    }
    for (int i = 0; i < streams; ++i) {
      std::size_t k = 0;
      for (const buffer_lease& l : held[i])
        for (std::byte b : l.data())
          ok = ok && b == pattern_byte(200 + static_cast<std::uint64_t>(i), k++);
      CHECK(k == at[i]);
    }
    CHECK(ok);
    CHECK(pool.stats().recycled == 0); // < 4 * 64 KiB in all: nothing went round
  };
  ctx.run(body());
  CHECK(pool.available() == 4);
}

TEST_CASE("a message across many buffers arrives complete and in order (bundles, INC, neither)") {
  const int mode = GENERATE(0, 1, 2, 3);
  CAPTURE(mode);
  io_context ctx;
  buffer_pool pool(ctx, 64, 256, {.incremental = (mode & 1) != 0, .bundle = (mode & 2) != 0});
  CHECK(pool.incremental() == ((mode & 1) != 0 && !on_epoll(ctx)));
  auto listener = loopback_listener(ctx);
  constexpr std::size_t total = 12 * 1024; // 48 buffers
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    require_ok(co_await p.client.write_all(bytes("x")));
    auto first = co_await p.server.receive(pool); // arms the receive
    require_ok(first);
    first->release();
    // In two halves, each all in the socket before the kernel picks
    // buffers: the first fills whole buffers, which makes the stream bulk
    // (its receive is re-armed with bundles), and the second comes in
    // bundles.
    const auto data = pattern(7, total);
    std::vector<buffer_lease> held;
    std::size_t at = 0;
    bool ok = true;
    for (std::size_t half = 1; half <= 2; ++half) {
      require_ok(co_await p.client.write_all(std::span(data).subspan(at, total / 2)));
      (void)co_await couring::sleep_for(ctx, 20ms);
      while (at < half * total / 2) {
        auto l = co_await couring::with_timeout(p.server.receive(pool), scaled(5s));
        require_ok(l);
        REQUIRE(!l->empty());
        CHECK(l->size() <= 256);
        for (std::byte b : l->data())
          ok = ok && b == pattern_byte(7, at++);
        held.push_back(std::move(*l));
      }
    }
    CHECK(ok);
    CHECK(at == total);
    // The epoll backend has no bundles (it reports no io_uring features):
    // the pool never asks for them, and loses nothing.
    CHECK(pool.bundled() == ((mode & 2) != 0 && !on_epoll(ctx)));
    const auto st = pool.stats();
    if (pool.bundled())
      CHECK(st.pieces > st.completions); // some completion covered several buffers
    else
      CHECK(st.pieces == st.completions);
    held.clear();
  };
  ctx.run(body());
  CHECK(pool.available() == 64);
}

TEST_CASE("starvation mid-bundle: 4 small buffers, 256 KiB, every lease held a while") {
  const int mode = GENERATE(0, 1, 2);
  CAPTURE(mode);
  io_context ctx;
  buffer_pool pool(ctx, 4, 256, {.incremental = mode == 0, .bundle = mode != 2});
  auto listener = loopback_listener(ctx);
  constexpr std::size_t total = 256 * 1024;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    auto sender = [&]() -> task<void> {
      co_await send_and_shut(p.client, pattern(11, total));
    };
    ctx.spawn(sender());
    std::vector<buffer_lease> held;
    std::size_t at = 0;
    bool ok = true;
    int starved = 0;
    for (;;) {
      auto l = co_await couring::with_timeout(p.server.receive(pool), scaled(10s));
      require_ok(l);
      if (l->empty())
        break;
      for (std::byte b : l->data())
        ok = ok && b == pattern_byte(11, at++);
      held.push_back(std::move(*l));
      if (pool.available() == 0) {
        ++starved;
        // Hold on: the bundle in the kernel finds the ring empty.
        (void)co_await couring::sleep_for(ctx, 1ms);
        held.clear();
      }
    }
    CHECK(ok);
    CHECK(at == total);
    CHECK(starved > 10);
  };
  ctx.run(body());
  CHECK(pool.available() == 4);
}

namespace {
// n connected pairs whose server sides each have their pool receive armed
// (one message sent and taken), for the chunk-record tests.
struct stream_pairs {
  std::vector<tcp_stream> servers, clients;
};
task<stream_pairs> armed_pairs(io_context& ctx, couring::tcp_listener& listener, buffer_pool& pool,
                               int n) {
  stream_pairs pairs;
  for (int i = 0; i < n; ++i) {
    auto p = co_await connect_pair(ctx, listener);
    pairs.servers.push_back(std::move(p.server));
    pairs.clients.push_back(std::move(p.client));
  }
  for (int i = 0; i < n; ++i) {
    require_ok(co_await pairs.clients[i].write_all(bytes("a")));
    auto l = co_await pairs.servers[i].receive(pool);
    require_ok(l);
  }
  co_return pairs;
}
} // namespace

TEST_CASE("INC: out of chunk records, a stream ends with a clear error after its data") {
  io_context ctx;
  buffer_pool pool(ctx, 2, 4096, {.max_queued_chunks = 4});
  if (!pool.incremental()) {
    CHECK(on_epoll(ctx));
    return;
  }
  auto listener = loopback_listener(ctx);
  constexpr int streams = 6;
  auto body = [&]() -> task<void> {
    auto [servers, clients] = co_await armed_pairs(ctx, listener, pool, streams);
    // Then nobody receives: each stream's next message is a chunk of its
    // own between the others' in the same buffer: 6 chunks, 4 records.
    for (int i = 0; i < streams; ++i) {
      require_ok(co_await clients[i].write_all(bytes(std::string(10, static_cast<char>('0' + i)))));
      (void)co_await couring::sleep_for(ctx, 5ms);
    }
    int delivered = 0;
    int refused = 0;
    for (int i = 0; i < streams; ++i) {
      auto l = co_await couring::with_timeout(servers[i].receive(pool), scaled(2s));
      if (l) {
        CHECK(text(l->data()) == std::string(10, static_cast<char>('0' + i)));
        ++delivered;
      } else {
        CHECK(is(l.error(), std::errc::no_buffer_space));
        ++refused;
        // Sticky: the stream receives no more.
        auto again = co_await servers[i].receive(pool);
        CHECK(is(again.error(), std::errc::no_buffer_space));
      }
    }
    CHECK(delivered == 4);
    CHECK(refused == 2);
  };
  ctx.run(body());
  CHECK(pool.available() == 2);
}

TEST_CASE("INC: close with chunks queued; a half-filled buffer stays with the kernel") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 256);
  if (!pool.incremental()) {
    CHECK(on_epoll(ctx));
    return;
  }
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    require_ok(co_await p.client.write_all(bytes("x")));
    auto first = co_await p.server.receive(pool); // arms the multishot (bundles too)
    require_ok(first);
    // 1 + 600 bytes: buffer 0 full (255 more), buffer 1 full, buffer 2 has 89.
    require_ok(co_await p.client.write_all(bytes(std::string(600, 'x'))));
    (void)co_await couring::sleep_for(ctx, 20ms);
    CHECK(pool.available() == 2); // 0 and 1 are out; 2 is still being filled
    p.server.close();
    (void)co_await couring::sleep_for(ctx, 20ms);
    // Buffer 1 came back; 0 waits for the lease on "x".
    CHECK(pool.available() == 3);
    CHECK(text(first->data()) == "x");
    first->release();
    CHECK(pool.available() == 4);
    CHECK(pool.stats().recycled == 2);
  };
  ctx.run(body());
  CHECK(pool.available() == 4);
}

TEST_CASE("a stream's pool receive is one request for its life: one completion per message") {
  // What makes the pool cheaper per round trip than a read per message
  // (benchmarks/pool_bench.sh counts the same with io_context's counters):
  // the multishot receive is armed once, and every message is one CQE.
  io_context ctx;
  buffer_pool pool(ctx, 8, 4096);
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    const std::string msg(64, 'm');
    // The first receive arms the stream's request (on epoll it also learns
    // that bundles are refused: one more request and completion).
    require_ok(co_await p.client.write_all(msg));
    auto first = co_await p.server.receive(pool);
    REQUIRE(first);
    CHECK(text(first->data()) == msg);
    const std::uint32_t sqes = ctx.sqe_count(), cqes = ctx.cqe_count();
    const std::uint64_t enters = ctx.enter_count();
    constexpr int messages = 20;
    for (int i = 0; i < messages; ++i) {
      require_ok(co_await p.client.write_all(msg));
      auto lease = co_await p.server.receive(pool);
      REQUIRE(lease);
      CHECK(text(lease->data()) == msg);
    }
    // Unsigned differences: the counters are the ring's free-running indexes.
    // Each write is one request and one completion; the receive adds no
    // request, and one completion per message.
    CHECK(static_cast<std::uint32_t>(ctx.sqe_count() - sqes) == messages);
    CHECK(static_cast<std::uint32_t>(ctx.cqe_count() - cqes) == 2 * messages);
    CHECK(ctx.enter_count() > enters);
    CHECK(pool.stats().completions == messages + 1);
  };
  ctx.run(body());
}

TEST_CASE("two receives waiting on one stream: the first gets the first piece directly, the "
          "rest keep their order") {
  // A piece goes straight into the stream's first waiting receive only when
  // nothing is queued before it; the pieces after it in the same completion
  // (a bundle across small buffers) go to the next receives, in order.
  io_context ctx;
  buffer_pool pool(ctx, 8, 100, {.incremental = false});
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    auto receive_text = [&]() -> task<std::string> {
      auto lease = co_await p.server.receive(pool);
      REQUIRE(lease);
      co_return text(lease->data());
    };
    auto send_later = [&]() -> task<std::string> {
      // Both receives wait before anything arrives.
      (void)co_await couring::sleep_for(ctx, 20ms);
      std::string data(100, 'a');
      data += std::string(100, 'b');
      data += std::string(50, 'c');
      require_ok(co_await p.client.write_all(data));
      co_return std::string{};
    };
    auto [one, two, ignored] =
        co_await couring::when_all(receive_text(), receive_text(), send_later());
    // Without bundles (epoll) the bytes may come as one receive per buffer:
    // either way, in order and in 100-byte buffers.
    CHECK(one == std::string(100, 'a'));
    CHECK(two == std::string(100, 'b'));
    auto third = co_await p.server.receive(pool);
    REQUIRE(third);
    CHECK(text(third->data()) == std::string(50, 'c'));
  };
  ctx.run(body());
}

namespace {
task<void> send_text(tcp_stream& s, std::string msg) {
  require_ok(co_await s.write_all(msg));
}
} // namespace

TEST_CASE("the one waiting receive served straight from the completion: timeouts, stops and "
          "queued data around it") {
  // The common case (one piece, one receive waiting) is handed over in the
  // completion itself; a receive under with_timeout / with_stop_token takes
  // that path too, and the next one still waits, times out, is cancelled
  // and then receives, in order, with nothing lost.
  io_context ctx;
  buffer_pool pool(ctx, 8, 4096);
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    constexpr int rounds = 200;
    for (int i = 0; i < rounds; ++i) {
      const std::string msg = "m" + std::to_string(i);
      ctx.spawn(send_text(p.client, msg)); // its bytes arrive while the receive waits
      std::stop_source never;
      result<buffer_lease> lease = buffer_lease{};
      if (i % 2 == 0)
        lease = co_await couring::with_timeout(p.server.receive(pool), scaled(5s));
      else
        lease = co_await couring::with_stop_token(p.server.receive(pool), never.get_token());
      REQUIRE(lease);
      CHECK(text(lease->data()) == msg);
    }
    CHECK(pool.stats().completions == rounds);
    // A receive that waits after those still times out, and one cancelled
    // while waiting still ends; the data that comes after goes to the next.
    auto late = co_await couring::with_timeout(p.server.receive(pool), 20ms);
    CHECK(is(late.error(), std::errc::timed_out));
    std::stop_source stop;
    auto stopper = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 10ms);
      stop.request_stop();
    };
    ctx.spawn(stopper());
    auto stopped = co_await couring::with_stop_token(p.server.receive(pool), stop.get_token());
    CHECK(is(stopped.error(), std::errc::operation_canceled));
    require_ok(co_await p.client.write_all(bytes("after")));
    auto after = co_await couring::with_timeout(p.server.receive(pool), scaled(5s));
    REQUIRE(after);
    CHECK(text(after->data()) == "after");
    // Close while a receive waits: it ends with operation_canceled.
    auto closer = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 10ms);
      p.server.close();
    };
    ctx.spawn(closer());
    auto closed = co_await p.server.receive(pool);
    CHECK(is(closed.error(), std::errc::operation_canceled));
  };
  ctx.run(body());
  CHECK(pool.available() == 8);
}

TEST_CASE("INC: chunk records are recycled: a bound of 4 serves round after round") {
  io_context ctx;
  buffer_pool pool(ctx, 2, 4096, {.max_queued_chunks = 4});
  if (!pool.incremental()) {
    CHECK(on_epoll(ctx));
    return;
  }
  auto listener = loopback_listener(ctx);
  constexpr int streams = 4;
  auto body = [&]() -> task<void> {
    auto [servers, clients] = co_await armed_pairs(ctx, listener, pool, streams);
    // Each round queues 4 chunks (interleaved in one buffer: no merging),
    // exactly the bound, and takes them all: the records come back and the
    // next round finds them (freed ones, not new ones).
    for (int round = 0; round < 10; ++round) {
      for (int i = 0; i < streams; ++i) {
        require_ok(
            co_await clients[i].write_all(bytes(std::string(8, static_cast<char>('a' + i)))));
        (void)co_await couring::sleep_for(ctx, 2ms);
      }
      for (int i = 0; i < streams; ++i) {
        auto l = co_await couring::with_timeout(servers[i].receive(pool), scaled(2s));
        REQUIRE(l);
        CHECK(text(l->data()) == std::string(8, static_cast<char>('a' + i)));
      }
    }
  };
  ctx.run(body());
  CHECK(pool.available() == 2);
}

namespace {
// Resident set size of this process, from /proc/self/statm.
std::size_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  REQUIRE(f != nullptr);
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  REQUIRE(n == 2);
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}
} // namespace

TEST_CASE("a pool of 8,192 buffers: its chunk records cost memory only when chunks queue") {
  // The default bound (64 per buffer with INC: 524,288 records, 8 MiB) and
  // even a bound of 16 M records (256 MiB) are address space: making the
  // pool touches neither (nor the buffers), only the per-buffer records and
  // the ring itself (about 256 KiB).
  io_context ctx;
  const std::size_t before = resident_bytes();
  buffer_pool pool(ctx, 8192, 4096);
  buffer_pool wide(ctx, 64, 4096, {.max_queued_chunks = std::size_t{1} << 24});
  const std::size_t after = resident_bytes();
  CHECK(after - before < std::size_t{2} << 20);
  CHECK(pool.available() == 8192);
  CHECK(wide.available() == 64);
}

TEST_CASE("bundles for bulk streams only: small messages keep a plain receive, a stream that "
          "fills whole buffers is re-armed once with bundles, in order") {
  io_context ctx;
  buffer_pool pool(ctx, 64, 1024);
  const bool uring = !on_epoll(ctx);
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    // Small messages: one completion each, and no request but the sends
    // (no cancel, no re-arm): the receive stays the plain one.
    require_ok(co_await p.client.write_all(bytes("first")));
    auto first = co_await p.server.receive(pool);
    REQUIRE(first);
    first->release();
    std::uint32_t sqes = ctx.sqe_count();
    std::size_t small = 0;
    for (int i = 0; i < 50; ++i) {
      require_ok(co_await p.client.write_all(std::string(100, 's')));
      // (A message that meets a buffer's end comes in two pieces, the
      // second with the next message: count bytes.)
      while (small < static_cast<std::size_t>(100 * (i + 1))) {
        auto l = co_await p.server.receive(pool);
        REQUIRE(l);
        small += l->size();
      }
    }
    CHECK(small == 5000);
    CHECK(static_cast<std::uint32_t>(ctx.sqe_count() - sqes) == 50);
    CHECK(pool.stats().pieces == pool.stats().completions);
    // Bulk: 256 KiB, checked byte by byte while it streams in. Its first
    // whole buffer re-arms the receive with bundles (one cancel and one
    // receive more than the sends), and the bytes stay in order across it.
    constexpr std::size_t total = 256 * 1024;
    const auto data = pattern(11, total);
    sqes = ctx.sqe_count();
    const auto before = pool.stats();
    auto sender = [&]() -> task<void> {
      for (std::size_t at = 0; at < total; at += 16 * 1024) {
        require_ok(co_await p.client.write_all(std::span(data).subspan(at, 16 * 1024)));
        (void)co_await couring::sleep_for(ctx, 1ms);
      }
    };
    ctx.spawn(sender());
    std::size_t at = 0;
    bool ok = true;
    while (at < total) {
      auto l = co_await couring::with_timeout(p.server.receive(pool), scaled(5s));
      if (!l)
        FAIL("receive at " << at << ": " << l.error().message());
      REQUIRE(!l->empty());
      for (std::byte b : l->data())
        ok = ok && b == pattern_byte(11, at++);
    }
    CHECK(ok);
    const auto after = pool.stats();
    const std::uint32_t extra = static_cast<std::uint32_t>(ctx.sqe_count() - sqes);
    if (uring) {
      CHECK(pool.bundled());
      // The sends (16 writes, each one request or a few), one cancel, one re-arm.
      CHECK(after.pieces - before.pieces > after.completions - before.completions);
      CHECK(extra >= 16 + 2);
    } else {
      CHECK(!pool.bundled());
      CHECK(after.pieces - before.pieces == after.completions - before.completions);
    }
    // Small messages after the bulk: still in order, still one lease each.
    require_ok(co_await p.client.write_all(bytes("tail")));
    auto tail = co_await couring::with_timeout(p.server.receive(pool), scaled(5s));
    REQUIRE(tail);
    CHECK(text(tail->data()) == "tail");
  };
  ctx.run(body());
  CHECK(pool.available() == 64);
}

TEST_CASE("a stream closed, or its pool destroyed, while its receive is re-armed for bundles") {
  const bool destroy_pool = GENERATE(false, true);
  CAPTURE(destroy_pool);
  io_context ctx;
  std::optional<buffer_pool> pool;
  pool.emplace(ctx, 16, 512);
  auto listener = loopback_listener(ctx);
  const auto fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    require_ok(co_await p.client.write_all(bytes("x")));
    auto first = co_await p.server.receive(*pool);
    REQUIRE(first);
    first->release();
    // A whole buffer arrives while a receive waits: the upgrade's cancel
    // goes out with the next submission; close (or stop) before it is done.
    auto waiter = [&]() -> task<result<buffer_lease>> {
      co_return co_await p.server.receive(*pool);
    };
    std::optional<result<buffer_lease>> got;
    auto keeper = [&, t = waiter()]() mutable -> task<void> {
      got.emplace(co_await std::move(t));
    };
    ctx.spawn(keeper());
    require_ok(co_await p.client.write_all(std::string(2048, 'b')));
    (void)co_await couring::sleep_for(ctx, 1ms);
    REQUIRE(got.has_value());
    require_ok(*got);
    if (destroy_pool)
      pool.reset();
    else
      p.server.close();
    // Whatever was queued is taken (or dropped), then the stream ends.
    for (int i = 0; i < 8; ++i) {
      if (destroy_pool)
        break;
      auto r = co_await p.server.receive(*pool);
      if (!r) {
        CHECK(is(r.error(), std::errc::operation_canceled));
        break;
      }
    }
    (void)co_await couring::sleep_for(ctx, 20ms);
    got.reset(); // the lease goes back (to a stopped pool: its memory is freed)
    p.server.close();
  };
  ctx.run(body());
  CHECK(open_fd_count() == fds_before);
  if (pool)
    CHECK(pool->available() == 16);
}
