// buffer_pool and stream::receive(pool) against hostile peers and awkward
// timing: streams closed while they are woken for a buffer, peers that
// vanish, pools replaced while streams still receive.

#include <catch2/catch.hpp>

#include <chrono>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include <sys/socket.h>

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

TEST_CASE("a hungry stream woken for a buffer and closed at once: the next hungry stream gets "
          "the buffer") {
  // One buffer. L holds it; A (its peer gone) and B (data waiting) are
  // hungry, in that order. L's lease ends: the buffer wakes A, which is
  // closed at once; its request ends without taking the buffer, which must
  // then go to B (nothing else will ever give a buffer back).
  for (const bool inc : {true, false}) {
    INFO("incremental asked: " << inc);
    io_context ctx;
    buffer_pool pool(ctx, 1, 256, {.incremental = inc, .bundle = false});
    auto listener = loopback_listener(ctx);
    std::optional<result<buffer_lease>> a_got;
    auto body = [&]() -> task<void> {
      auto l = co_await connect_pair(ctx, listener);
      auto a = co_await connect_pair(ctx, listener);
      auto b = co_await connect_pair(ctx, listener);
      require_ok(co_await l.client.write_all(std::vector<std::byte>(256, std::byte{'l'})));
      auto lease = co_await l.server.receive(pool);
      require_ok(lease);
      REQUIRE(lease->size() == 256);
      REQUIRE(pool.available() == 0);
      auto a_receive = [&]() -> task<void> {
        a_got.emplace(co_await a.server.receive(pool));
      };
      ctx.spawn(a_receive());
      (void)co_await couring::sleep_for(ctx, 10ms); // A's receive is armed
      a.client.close();                             // end of stream, no buffer to say so
      (void)co_await couring::sleep_for(ctx, 20ms); // A is hungry
      REQUIRE(!a_got.has_value());
      // B's receive is armed; its data waits for a buffer too.
      auto b_first = couring::with_timeout(b.server.receive(pool), scaled(2s));
      auto b_send = [&]() -> task<void> {
        (void)co_await couring::sleep_for(ctx, 10ms);
        require_ok(co_await b.client.write_all(bytes("hello")));
        (void)co_await couring::sleep_for(ctx, 20ms); // B is hungry
        lease->release();                             // wakes A ...
        a.server.close(); // ... which goes away before its receive completes
      };
      ctx.spawn(b_send());
      auto got = co_await b_first;
      require_ok(got);
      CHECK(text(got->data()) == "hello");
      REQUIRE(a_got.has_value());
      CHECK(is(a_got->error(), std::errc::operation_canceled));
    };
    ctx.run(body());
    CHECK(pool.available() == 1);
  }
}

TEST_CASE("a pool destroyed and another made at once: the old pool's stream never takes the new "
          "pool's buffers") {
  // The new pool may get the old one's buffer group id back; the old
  // stream's receive must end (operation_canceled), not be filled from the
  // new ring.
  io_context ctx;
  std::optional<buffer_pool> old_pool;
  old_pool.emplace(ctx, 4, 256);
  auto listener = loopback_listener(ctx);
  std::optional<buffer_pool> fresh;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::optional<result<buffer_lease>> got;
    auto waiting = [&]() -> task<void> {
      got.emplace(co_await p.server.receive(*old_pool));
    };
    ctx.spawn(waiting());
    (void)co_await couring::sleep_for(ctx, 10ms); // the multishot receive is armed
    const unsigned old_id = old_pool->group_id();
    old_pool.reset();
    fresh.emplace(ctx, 4, 256);
    CHECK(fresh->group_id() == old_id); // the id is free again at once
    // The bytes are in the socket before the old pool's cancel has reached
    // the kernel.
    REQUIRE(::send(p.client.native_handle(), "hello", 5, 0) == 5);
    (void)co_await couring::sleep_for(ctx, 20ms);
    REQUIRE(got.has_value());
    CHECK(is(got->error(), std::errc::operation_canceled));
    CHECK(fresh->available() == 4);
    // The new pool serves a new stream.
    auto q = co_await connect_pair(ctx, listener);
    require_ok(co_await q.client.write_all(bytes("fresh")));
    auto lease = co_await couring::with_timeout(q.server.receive(*fresh), scaled(2s));
    require_ok(lease);
    CHECK(text(lease->data()) == "fresh");
  };
  ctx.run(body());
  CHECK(fresh->available() == 4);
}

TEST_CASE("connections that send and vanish, round after round: buffers and chunk records come "
          "back") {
  // Each round: 20 peers send a few messages; half of them reset, half close.
  // The server reads half of its streams to the end and closes the other half
  // with their chunks still queued. 32 chunk records (INC) would run out by
  // the second round if any were kept.
  raise_fd_limit();
  const bool inc = GENERATE(true, false);
  CAPTURE(inc);
  io_context ctx;
  buffer_pool pool(ctx, 8, 1024, {.incremental = inc, .max_queued_chunks = 32});
  auto listener = loopback_listener(ctx);
  const auto fds_before = open_fd_count();
  int read_to_end = 0;
  int failures = 0;
  auto body = [&]() -> task<void> {
    constexpr int rounds = 6;
    constexpr int per_round = 20;
    for (int round = 0; round < rounds; ++round) {
      std::vector<tcp_stream> servers;
      for (int i = 0; i < per_round; ++i) {
        auto p = co_await connect_pair(ctx, listener);
        // The first receive arms the stream's multishot; it waits.
        auto r = co_await couring::with_timeout(p.server.receive(pool), 1ms);
        CHECK(is(r.error(), std::errc::timed_out));
        require_ok(co_await p.client.write_all(bytes("m" + std::to_string(i))));
        if (i % 2 == 0) {
          linger lg{.l_onoff = 1, .l_linger = 0};
          REQUIRE(::setsockopt(p.client.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) ==
                  0);
        }
        p.client.close(); // gone: a reset or an end of stream
        servers.push_back(std::move(p.server));
      }
      (void)co_await couring::sleep_for(ctx, 20ms); // everything has arrived (or been reset)
      for (int i = 0; i < per_round; ++i) {
        if (i % 4 >= 2) {
          servers[static_cast<std::size_t>(i)].close(); // chunks queued, nobody takes them
          continue;
        }
        for (int n = 0; n < 4; ++n) {
          auto l = co_await couring::with_timeout(
              servers[static_cast<std::size_t>(i)].receive(pool), scaled(2s));
          if (!l) {
            // A reset may drop what was unread; anything else is a failure.
            if (!is(l.error(), std::errc::connection_reset))
              ++failures;
            break;
          }
          if (l->empty()) {
            ++read_to_end;
            break;
          }
          CHECK(text(l->data()) == "m" + std::to_string(i));
        }
        servers[static_cast<std::size_t>(i)].close();
      }
      (void)co_await couring::sleep_for(ctx, 10ms);
      CHECK(pool.available() == 8);
    }
  };
  ctx.run(body());
  CHECK(failures == 0);
  CHECK(read_to_end > 0);
  CHECK(pool.available() == 8);
  CHECK(open_fd_count() == fds_before);
}

namespace {

// Receives until end of stream, checking each byte against pattern(seed);
// every hold_every-th lease is kept across a short sleep (starvation).
task<long> receive_checked(tcp_stream& s, buffer_pool& pool, std::uint64_t seed, int hold_every) {
  std::size_t at = 0;
  for (int n = 1;; ++n) {
    auto lease = co_await couring::with_timeout(s.receive(pool), scaled(10s));
    if (!lease) {
      UNSCOPED_INFO("receive: " << lease.error().message() << " after " << at << " bytes");
      co_return -1;
    }
    if (lease->empty())
      co_return static_cast<long>(at);
    for (std::byte b : lease->data())
      if (b != pattern_byte(seed, at++)) {
        UNSCOPED_INFO("wrong byte at " << at - 1);
        co_return -1;
      }
    if (hold_every > 0 && n % hold_every == 0)
      (void)co_await couring::sleep_for(s.context(), 1ms);
  }
}

} // namespace

TEST_CASE("bulk streams turn to bundles while the pool starves: order kept, nothing lost") {
  // Every stream fills whole buffers, so every one is cancelled and re-armed
  // for bundles, mostly while the pool is empty (ENOBUFS around the switch).
  // 5 buffers: the ring has 8 slots, so bundles run across its wrap with
  // slots that hold no buffer; 1000 bytes: pieces that are not page-sized.
  const bool inc = GENERATE(true, false);
  const std::size_t count = GENERATE(4, 5);
  const std::size_t size = GENERATE(4096, 1000);
  CAPTURE(inc, count, size);
  io_context ctx;
  buffer_pool pool(ctx, count, size, {.incremental = inc});
  auto listener = loopback_listener(ctx);
  constexpr int streams = 16;
  constexpr std::size_t per_stream = 192 * 1024;
  int complete = 0;
  auto server_side = [&](tcp_stream s, std::uint64_t seed, int hold_every) -> task<void> {
    const long n = co_await receive_checked(s, pool, seed, hold_every);
    CHECK(n == static_cast<long>(per_stream));
    if (n == static_cast<long>(per_stream))
      ++complete;
  };
  auto client_side = [&](tcp_stream c, std::uint64_t seed) -> task<void> {
    require_ok(co_await c.write_all(pattern(seed, per_stream)));
    require_ok(c.shutdown_write());
    std::byte b[1];
    auto n = co_await c.read(b);
    CHECK((n && *n == 0));
  };
  auto body = [&]() -> task<void> {
    for (int i = 0; i < streams; ++i) {
      auto p = co_await connect_pair(ctx, listener);
      const auto seed = 77 + static_cast<std::uint64_t>(i);
      ctx.spawn(server_side(std::move(p.server), seed, i % 4));
      ctx.spawn(client_side(std::move(p.client), seed));
    }
  };
  ctx.spawn(body());
  ctx.run();
  CHECK(complete == streams);
  CHECK(pool.available() == count);
  if (pool.bundled())
    CHECK(pool.stats().pieces > pool.stats().completions); // bundles did run
}

TEST_CASE("a peer that sends one byte at a time beside a bulk peer (INC shares buffers)") {
  io_context ctx;
  buffer_pool pool(ctx, 4, 512, {.max_queued_chunks = 4096});
  auto listener = loopback_listener(ctx);
  constexpr std::size_t drip_bytes = 1500;
  constexpr std::size_t bulk_bytes = 256 * 1024;
  long drip_got = -2;
  long bulk_got = -2;
  auto body = [&]() -> task<void> {
    auto drip = co_await connect_pair(ctx, listener);
    auto bulk = co_await connect_pair(ctx, listener);
    require_ok(drip.client.set_no_delay(true));
    auto dripper = [&]() -> task<void> {
      const auto data = pattern(5, drip_bytes);
      for (std::size_t i = 0; i < drip_bytes; ++i) {
        require_ok(co_await drip.client.write_all(std::span(data).subspan(i, 1)));
        if (i % 64 == 0)
          (void)co_await couring::sleep_for(ctx, 1ms);
      }
      require_ok(drip.client.shutdown_write());
    };
    auto bulker = [&]() -> task<void> {
      require_ok(co_await bulk.client.write_all(pattern(6, bulk_bytes)));
      require_ok(bulk.client.shutdown_write());
    };
    auto drip_reader = [&]() -> task<void> {
      drip_got = co_await receive_checked(drip.server, pool, 5, 3);
    };
    auto bulk_reader = [&]() -> task<void> {
      bulk_got = co_await receive_checked(bulk.server, pool, 6, 5);
    };
    ctx.spawn(dripper());
    ctx.spawn(bulker());
    ctx.spawn(drip_reader());
    co_await bulk_reader();
    while (drip_got == -2)
      (void)co_await couring::sleep_for(ctx, 5ms);
  };
  ctx.run(body());
  CHECK(drip_got == static_cast<long>(drip_bytes));
  CHECK(bulk_got == static_cast<long>(bulk_bytes));
  CHECK(pool.available() == 4);
}

TEST_CASE("teardown with leases, queued chunks and waiting receives alive") {
  // The context goes away while frames hold leases, streams with chunks
  // queued and receives waiting; the pool object went first (as it must) or
  // lives in a frame. Under ASan/LSan: no use after free, nothing leaked.
  const bool pool_in_frame = GENERATE(false, true);
  CAPTURE(pool_in_frame);
  const auto fds_before = open_fd_count();
  {
    io_context ctx;
    auto listener = loopback_listener(ctx);
    std::optional<buffer_pool> outer;
    if (!pool_in_frame)
      outer.emplace(ctx, 4, 256);
    int ready = 0;
    auto holder = [&]() -> task<void> {
      std::optional<buffer_pool> own;
      if (pool_in_frame)
        own.emplace(ctx, 4, 256);
      buffer_pool& pool = pool_in_frame ? *own : *outer;
      auto p = co_await connect_pair(ctx, listener);
      require_ok(co_await p.client.write_all(bytes("abc")));
      auto lease = co_await p.server.receive(pool);
      require_ok(lease);
      require_ok(co_await p.client.write_all(std::string(600, 'q'))); // queued chunks
      auto q = co_await connect_pair(ctx, listener);
      ++ready;
      auto never = co_await q.server.receive(pool); // waits until teardown
      (void)never;
      CHECK(false); // never resumed
    };
    auto stopper = [&]() -> task<void> {
      while (ready < 2)
        (void)co_await couring::sleep_for(ctx, 5ms);
      (void)co_await couring::sleep_for(ctx, 20ms);
      ctx.stop();
    };
    ctx.spawn(holder());
    ctx.spawn(holder());
    ctx.spawn(stopper());
    ctx.run();
    outer.reset(); // before the context, with leases and receivers alive
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("receives that time out, or whose stream is closed, while waiting for a buffer") {
  const bool inc = GENERATE(true, false);
  CAPTURE(inc);
  io_context ctx;
  buffer_pool pool(ctx, 1, 256, {.incremental = inc});
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto l = co_await connect_pair(ctx, listener);
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    require_ok(co_await l.client.write_all(std::vector<std::byte>(256, std::byte{'l'})));
    auto lease = co_await l.server.receive(pool);
    require_ok(lease);
    REQUIRE(pool.available() == 0);
    // A: data waits for a buffer; its receive times out (twice), nothing lost.
    require_ok(co_await a.client.write_all(bytes("aaa")));
    auto t1 = co_await couring::with_timeout(a.server.receive(pool), 30ms);
    CHECK(is(t1.error(), std::errc::timed_out));
    auto t2 = co_await couring::with_timeout(a.server.receive(pool), 10ms);
    CHECK(is(t2.error(), std::errc::timed_out));
    // B: hungry too, closed while its receive waits.
    require_ok(co_await b.client.write_all(bytes("bbb")));
    std::optional<result<buffer_lease>> b_got;
    auto b_receive = [&]() -> task<void> {
      b_got.emplace(co_await b.server.receive(pool));
    };
    ctx.spawn(b_receive());
    (void)co_await couring::sleep_for(ctx, 20ms);
    REQUIRE(!b_got.has_value());
    b.server.close();
    (void)co_await couring::sleep_for(ctx, 5ms);
    REQUIRE(b_got.has_value());
    CHECK(is(b_got->error(), std::errc::operation_canceled));
    // The buffer comes back: A gets its data.
    lease->release();
    auto got = co_await couring::with_timeout(a.server.receive(pool), scaled(2s));
    require_ok(got);
    CHECK(text(got->data()) == "aaa");
  };
  ctx.run(body());
  CHECK(pool.available() == 1);
}

TEST_CASE("misuse: a receive from a pool of another io_context is a logic_error") {
  // The pool's ring is another context's (another thread's, with a
  // runtime): arming the stream's receive there would race with that
  // context's own submissions.
  io_context ctx;
  io_context other;
  buffer_pool foreign(other, 4, 256);
  buffer_pool own(ctx, 4, 256);
  auto listener = loopback_listener(ctx);
  bool threw = false;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    try {
      auto r = co_await couring::with_timeout(p.server.receive(foreign), 100ms);
      (void)r;
    } catch (const std::logic_error&) {
      threw = true;
    }
    if (!threw)
      co_return; // (the stream is unusable then)
    // The stream is untouched: it receives from its own context's pool.
    require_ok(co_await p.client.write_all(bytes("ok")));
    auto lease = co_await couring::with_timeout(p.server.receive(own), scaled(2s));
    require_ok(lease);
    CHECK(text(lease->data()) == "ok");
  };
  ctx.run(body());
  CHECK(threw);
  CHECK(own.available() == 4);
  CHECK(foreign.available() == 4);
}

namespace {

// A small deterministic generator (the same run on every machine).
struct lcg {
  std::uint64_t s;
  std::uint32_t next(std::uint32_t bound) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::uint32_t>((s >> 33) % bound);
  }
};

// Requests a stop after delay; owns its parameters (the stream's frame may
// be gone by then).
task<void> stop_after(io_context& ctx, std::stop_source stop, std::chrono::microseconds delay) {
  (void)co_await couring::sleep_for(ctx, delay);
  stop.request_stop();
}

} // namespace

TEST_CASE("random closes, timeouts, stops and held leases over many streams (ASan: no misuse)") {
  // Each server stream receives with a random mix of plain receives,
  // timeouts and stop requests, holds up to three leases, and sometimes
  // closes early; each peer sends random-sized pieces and ends cleanly,
  // resets, or just closes. Whatever a stream read must be its peer's bytes
  // in order; the streams read to a clean end got everything; the pool and
  // the descriptors all come back.
  raise_fd_limit();
  const bool inc = GENERATE(true, false);
  const std::uint64_t run = GENERATE(1, 2, 3);
  CAPTURE(inc, run);
  io_context ctx;
  buffer_pool pool(ctx, 4, 512, {.incremental = inc});
  auto listener = loopback_listener(ctx);
  const auto fds_before = open_fd_count();
  constexpr int streams = 48;
  int wrong = 0;
  int clean_complete = 0;
  int clean_expected = 0;
  auto server_side = [&](tcp_stream s, std::uint64_t seed, std::size_t expect,
                         bool clean) -> task<void> {
    lcg rng{seed * 7 + 1};
    const bool close_early = rng.next(5) == 0;
    if (clean && !close_early)
      ++clean_expected;
    std::vector<buffer_lease> held;
    std::size_t at = 0;
    for (int round = 0; round < 100000; ++round) {
      if (close_early && at > 2000)
        co_return; // closed with whatever is queued
      result<buffer_lease> lease = buffer_lease{};
      // A plain receive only with no lease held: waiting for data while
      // holding buffers of a shared pool can deadlock (every stream holds
      // some and waits for more); the others give theirs up when they end.
      switch (held.empty() ? rng.next(3) : 1 + rng.next(2)) {
      case 0:
        lease = co_await s.receive(pool);
        break;
      case 1: {
        lease = co_await couring::with_timeout(s.receive(pool),
                                               std::chrono::microseconds(rng.next(3000)));
        break;
      }
      default: {
        std::stop_source stop;
        const auto delay = std::chrono::microseconds(rng.next(3000));
        ctx.spawn(stop_after(ctx, stop, delay)); // (may outlive this frame)
        lease = co_await couring::with_stop_token(s.receive(pool), stop.get_token());
        break;
      }
      }
      if (!lease) {
        if (is(lease.error(), std::errc::timed_out) ||
            is(lease.error(), std::errc::operation_canceled)) {
          held.clear();
          continue; // nothing lost: the next receive gets it
        }
        break; // a reset
      }
      if (lease->empty()) {
        if (clean && at == expect)
          ++clean_complete;
        break;
      }
      for (std::byte b : lease->data())
        if (b != pattern_byte(seed, at++))
          ++wrong;
      held.push_back(std::move(*lease));
      if (held.size() > 3 || rng.next(2) == 0)
        held.erase(held.begin() + rng.next(static_cast<std::uint32_t>(held.size())));
      if (rng.next(8) == 0)
        (void)co_await couring::sleep_for(ctx, 1ms);
    }
  };
  auto client_side = [&](tcp_stream c, std::uint64_t seed, std::size_t total,
                         int ending) -> task<void> {
    lcg rng{seed};
    const auto data = pattern(seed, total);
    std::size_t at = 0;
    while (at < total) {
      const std::size_t n = std::min<std::size_t>(total - at, 1 + rng.next(3000));
      auto w = co_await c.write_all(std::span(data).subspan(at, n));
      if (!w)
        co_return; // the server closed early
      at += n;
      if (rng.next(4) == 0)
        (void)co_await couring::sleep_for(ctx, std::chrono::microseconds(rng.next(2000)));
    }
    if (ending == 0) {
      (void)c.shutdown_write();
      std::byte b[1];
      (void)co_await couring::with_timeout(c.read(b), scaled(10s)); // until the server is done
    } else if (ending == 1) {
      linger lg{.l_onoff = 1, .l_linger = 0};
      ::setsockopt(c.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
  };
  auto body = [&]() -> task<void> {
    lcg rng{99 + run};
    for (int i = 0; i < streams; ++i) {
      auto p = co_await connect_pair(ctx, listener);
      const auto seed = run * 1000 + static_cast<std::uint64_t>(i);
      const std::size_t total = 1 + rng.next(40000);
      const int ending = static_cast<int>(rng.next(3)); // clean, reset, close
      ctx.spawn(server_side(std::move(p.server), seed, total, ending == 0));
      ctx.spawn(client_side(std::move(p.client), seed, total, ending));
      if (rng.next(3) == 0)
        (void)co_await couring::sleep_for(ctx, 1ms);
    }
  };
  ctx.spawn(body());
  ctx.run();
  CHECK(wrong == 0);
  CHECK(clean_expected > 5);
  CHECK(clean_complete == clean_expected);
  CHECK(pool.available() == 4);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("misuse: a read on a stream that receives through a pool fails at once, data or not") {
  // The stream's receiver holds its read side for as long as it is open: a
  // read queued behind it would wait for ever if nothing arrived (or after
  // the end of stream). It fails with invalid_argument instead, with or
  // without a timeout around it, and the stream still receives.
  io_context ctx;
  buffer_pool pool(ctx, 4, 256);
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    require_ok(co_await p.client.write_all(bytes("one")));
    auto first = co_await p.server.receive(pool);
    require_ok(first);
    std::byte buf[16];
    auto r1 = co_await couring::with_timeout(p.server.read(buf), scaled(1s));
    CHECK(is(r1.error(), std::errc::invalid_argument));
    auto r2 = co_await p.server.read(buf);
    CHECK(is(r2.error(), std::errc::invalid_argument));
    std::stop_source never;
    auto r3 = co_await couring::with_stop_token(p.server.read(buf), never.get_token());
    CHECK(is(r3.error(), std::errc::invalid_argument));
    require_ok(co_await p.client.write_all(bytes("two")));
    require_ok(p.client.shutdown_write());
    auto second = co_await couring::with_timeout(p.server.receive(pool), scaled(2s));
    require_ok(second);
    CHECK(text(second->data()) == "two");
    auto end = co_await couring::with_timeout(p.server.receive(pool), scaled(2s));
    require_ok(end);
    CHECK(end->empty());
    // After the end of stream too.
    auto r4 = co_await couring::with_timeout(p.server.read(buf), scaled(1s));
    CHECK(is(r4.error(), std::errc::invalid_argument));
  };
  ctx.run(body());
  CHECK(pool.available() == 4);
}

TEST_CASE("misuse: read_exactly on a stream that receives through a pool fails at once") {
  // read_exactly is a compound operation: ended from its side's queue (never
  // issued, no CQE), its completion function must see no CQE flags.
  io_context ctx;
  buffer_pool pool(ctx, 4, 256);
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    require_ok(co_await p.client.write_all(bytes("one")));
    auto first = co_await p.server.receive(pool);
    require_ok(first);
    std::byte buf[16];
    auto r1 = co_await couring::with_timeout(p.server.read_exactly(buf), scaled(1s));
    CHECK(is(r1.error(), std::errc::invalid_argument));
    auto r2 = co_await p.server.read_exactly(buf);
    CHECK(is(r2.error(), std::errc::invalid_argument));
  };
  ctx.run(body());
}

TEST_CASE("a write_all waiting in line behind another, cancelled or closed, ends") {
  // (Not a pool case, the same path: a compound operation ended from its
  // side's queue.) The first write_all blocks (the peer does not read); the
  // second waits in line and is stopped, then a third is ended by close.
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    const std::vector<std::byte> big(32 << 20, std::byte{'b'});
    std::optional<result<void>> first;
    auto blocker = [&]() -> task<void> {
      first.emplace(co_await p.client.write_all(big));
    };
    ctx.spawn(blocker());
    (void)co_await couring::sleep_for(ctx, 10ms);
    REQUIRE(!first.has_value());
    std::stop_source stop;
    auto stopper = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 10ms);
      stop.request_stop();
    };
    ctx.spawn(stopper());
    const std::vector<std::byte> small(100, std::byte{'s'});
    auto second = co_await couring::with_stop_token(p.client.write_all(small), stop.get_token());
    CHECK(is(second.error(), std::errc::operation_canceled));
    auto timed = co_await couring::with_timeout(p.client.write_all(small), 10ms);
    CHECK(is(timed.error(), std::errc::timed_out));
    std::optional<result<void>> third;
    auto waiter = [&]() -> task<void> {
      third.emplace(co_await p.client.write_all(small));
    };
    ctx.spawn(waiter());
    (void)co_await couring::sleep_for(ctx, 10ms);
    p.client.close();
    (void)co_await couring::sleep_for(ctx, 20ms);
    REQUIRE(third.has_value());
    CHECK(is(third->error(), std::errc::operation_canceled));
    REQUIRE(first.has_value());
    CHECK(!first->has_value());
  };
  ctx.run(body());
}
