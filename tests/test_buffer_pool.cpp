// buffer_pool and stream::receive(pool): order and completeness under
// starvation, lease lifetimes, cancellation and close with the multishot
// receive armed, CQ overflow, floods and resets.

#include <catch2/catch.hpp>

#include <chrono>
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

bool is(const std::error_code& ec, std::errc e) { return ec == e; }

// Receives until end of stream, checking every byte against pattern(seed);
// returns the byte count (or -1 on an error or a wrong byte).
task<long> receive_all(tcp_stream& s, buffer_pool& pool, std::uint64_t seed) {
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
  buffer_pool pool(ctx, 4, 64);
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
  auto server_side = [&](tcp_stream s, std::uint64_t seed) -> task<void> {
    const long n = co_await receive_all(s, pool, seed);
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
  CHECK(failed == 0);
  CHECK(complete == connections);
  CHECK(pool.available() == 8);
}
