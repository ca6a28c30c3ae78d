// buffer_pool bookkeeping across the end of a stream, of the pool and of
// the context, while bundles (IORING_RECVSEND_BUNDLE) and incremental
// consumption (IOU_PBUF_RING_INC) are in play: a stream ended with a bundle
// delivered to two receives and the rest of it queued, leases that outlive
// the stream or the pool, completions reaped only at teardown. After each,
// the pool must lend exactly as many buffers as it has: a buffer lost in the
// bookkeeping starves the next stream, one given back twice sits in the
// kernel's ring twice (two leases over the same bytes). A stopped pool must
// free its memory once its last lease and receiver are gone (its counters
// reach zero): the tests look at the mapping itself.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using couring::buffer_lease;
using couring::buffer_pool;
using couring::buffer_pool_options;
using couring::buffer_pool_stats;
using couring::io_context;
using couring::result;
using couring::task;
using couring::tcp_stream;

namespace {

bool on_epoll(io_context& ctx) {
  return ctx.features().backend == couring::backend::epoll;
}

// Whether the page holding p is mapped (a stopped pool unmaps its buffers
// when its last lease and receiver are gone).
bool mapped(const void* p) {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  void* start = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(p) / page * page);
  return ::msync(start, 1, MS_ASYNC) == 0 || errno != ENOMEM;
}

// Sleeps until pred() holds (true) or about two seconds have passed (false).
template <class Pred>
task<bool> eventually(io_context& ctx, Pred pred) {
  for (int i = 0; i < 2000; ++i) {
    if (pred())
      co_return true;
    (void)co_await couring::sleep_for(ctx, 1ms);
  }
  co_return pred();
}

// A fresh stream on the same pool must get every buffer of the pool at
// once: count * size bytes held in leases (exact), or, if a buffer may be
// half-filled in the kernel (INC), all buffers out of the ring and at least
// count - 1 buffers' worth of bytes. No two leases overlap, held bytes are
// never overwritten, and no receive finds a buffer beyond them. Then every
// byte arrives, in order, and the pool is whole again.
task<void> check_capacity(io_context& ctx, couring::tcp_listener& listener, buffer_pool& pool,
                          bool exact, std::uint64_t seed) {
  const std::size_t count = pool.count();
  const std::size_t size = pool.buffer_size();
  const std::size_t all = count * size;
  REQUIRE(pool.available() == count);
  auto p = co_await connect_pair(ctx, listener);
  const auto data = pattern(seed, all + 100);
  require_ok(co_await p.client.write_all(data));
  std::vector<buffer_lease> held;
  std::size_t at = 0;
  bool in_order = true;
  bool starved = false;
  while (at < all) {
    // A buffer lost in the bookkeeping shows here: the stream starves with
    // its data waiting in the socket.
    auto l = co_await couring::with_timeout(p.server.receive(pool), exact ? scaled(2s) : 200ms);
    if (!l) {
      CHECK(is(l.error(), std::errc::timed_out));
      starved = true;
      break;
    }
    REQUIRE(!l->empty());
    for (std::byte b : l->data())
      in_order = in_order && b == pattern_byte(seed, at++);
    held.push_back(std::move(*l));
  }
  CHECK(in_order);
  CAPTURE(at, all, held.size());
  if (exact) {
    CHECK(!starved);
    CHECK(at == all);
  } else {
    CHECK(at >= all - size);
  }
  CHECK(pool.available() == 0);
  // A buffer the kernel has twice would be lent again here, over bytes a
  // lease still holds.
  if (!starved) {
    auto extra = co_await couring::with_timeout(p.server.receive(pool), 50ms);
    if (extra) {
      FAIL("a receive got a buffer beyond the pool's " << count << " (" << extra->size()
                                                       << " bytes)");
    }
    CHECK(is(extra.error(), std::errc::timed_out));
  }
  std::vector<std::pair<const std::byte*, const std::byte*>> ranges;
  std::size_t again = 0;
  bool intact = true;
  for (const buffer_lease& l : held) {
    ranges.emplace_back(l.data().data(), l.data().data() + l.size());
    for (std::byte b : l.data())
      intact = intact && b == pattern_byte(seed, again++);
  }
  CHECK(intact);
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i)
    CHECK(ranges[i - 1].second <= ranges[i].first);
  held.clear();
  CHECK(pool.available() == count);
  // The rest (after the starvation, the bytes that waited in the socket).
  while (at < all + 100) {
    auto l = co_await couring::with_timeout(p.server.receive(pool), scaled(2s));
    require_ok(l);
    REQUIRE(!l->empty());
    for (std::byte b : l->data())
      in_order = in_order && b == pattern_byte(seed, at++);
  }
  CHECK(in_order);
  CHECK(at == all + 100);
  p.server.close();
  (void)co_await couring::sleep_for(ctx, 5ms); // its receive's last completion: the fd goes
  auto whole = [&] {
    return pool.available() == count;
  };
  const bool back = co_await eventually(ctx, whole);
  CHECK(back);
}

// The buffers the leases are in (a pool's memory is page-aligned and these
// tests' buffer sizes divide a page: a buffer is its address / size).
std::size_t buffers_of(const std::vector<buffer_lease>& leases, std::size_t size) {
  std::vector<std::uintptr_t> ids;
  for (const auto& l : leases)
    ids.push_back(reinterpret_cast<std::uintptr_t>(l.data().data()) / size);
  std::sort(ids.begin(), ids.end());
  return static_cast<std::size_t>(std::unique(ids.begin(), ids.end()) - ids.begin());
}

struct received {
  std::optional<result<buffer_lease>> got;
};

task<void> receive_into(tcp_stream& s, buffer_pool& pool, received& into) {
  into.got.emplace(co_await s.receive(pool));
}

enum class ending { close, peer_eof, peer_reset, take_some_then_close };

const char* name(ending e) {
  switch (e) {
  case ending::close:
    return "closed with chunks queued";
  case ending::peer_eof:
    return "peer's end of stream queued, then closed";
  case ending::peer_reset:
    return "peer reset, then closed";
  default:
    return "some chunks taken, then closed";
  }
}

} // namespace

// (Catch2's console reporter indents a wrapped test name at its first ": ",
// and aborts if that is past the line's width: keep it early.)
TEST_CASE("stream ended: a bulk stream whose bundle went to two receives, the rest queued, "
          "its leases outliving it; the next stream gets every buffer, none twice") {
  const int mode = GENERATE(0, 1, 2, 3);
  const ending end =
      GENERATE(ending::close, ending::peer_eof, ending::peer_reset, ending::take_some_then_close);
  const bool inc = (mode & 1) != 0;
  const bool bundle = (mode & 2) != 0;
  CAPTURE(inc, bundle, name(end));
  io_context ctx;
  constexpr std::size_t count = 16;
  constexpr std::size_t size = 512;
  buffer_pool pool(ctx, count, size, {.incremental = inc, .bundle = bundle});
  auto listener = loopback_listener(ctx);
  const auto fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    std::vector<buffer_lease> outliving;
    {
      auto p = co_await connect_pair(ctx, listener);
      // One whole buffer: the stream turns bulk (its receive is re-armed
      // with bundles where the pool has them).
      const auto first_data = pattern(1, size);
      require_ok(co_await p.client.write_all(first_data));
      auto first = co_await p.server.receive(pool);
      require_ok(first);
      std::size_t first_bytes = first->size();
      outliving.push_back(std::move(*first));
      while (first_bytes < size) {
        auto more = co_await p.server.receive(pool);
        require_ok(more);
        first_bytes += more->size();
        outliving.push_back(std::move(*more));
      }
      // Let the upgrade (cancel, re-arm with bundles) finish.
      (void)co_await couring::sleep_for(ctx, 5ms);
      // Two receives wait; eight buffers' worth arrives in one write.
      received a, b;
      ctx.spawn(receive_into(p.server, pool, a));
      ctx.spawn(receive_into(p.server, pool, b));
      (void)co_await couring::sleep_for(ctx, 2ms);
      REQUIRE(!a.got.has_value());
      REQUIRE(!b.got.has_value());
      const auto before = pool.stats();
      const auto burst = pattern(2, 8 * size);
      require_ok(co_await p.client.write_all(burst));
      // Every byte of it in the pool's buffers (the first buffer is full,
      // so the burst fills whole buffers: exactly eight more are out).
      auto all_in = [&] {
        return a.got.has_value() && b.got.has_value() && pool.available() == count - 1 - 8;
      };
      const bool arrived = co_await eventually(ctx, all_in);
      REQUIRE(arrived);
      require_ok(*a.got);
      require_ok(*b.got);
      std::size_t at = 0;
      bool ok = true;
      for (auto* l : {&**a.got, &**b.got})
        for (std::byte x : l->data())
          ok = ok && x == pattern_byte(2, at++);
      CHECK(ok);
      CHECK(at < 8 * size); // the rest is queued in the stream's receiver
      const auto after = pool.stats();
      if (pool.bundled())
        CHECK(after.pieces - before.pieces > after.completions - before.completions);
      CHECK(pool.bundled() == (bundle && !on_epoll(ctx)));
      switch (end) {
      case ending::close:
        break;
      case ending::peer_eof:
        require_ok(p.client.shutdown_write());
        (void)co_await couring::sleep_for(ctx, 5ms); // the end is queued behind the chunks
        break;
      case ending::peer_reset: {
        linger lg{.l_onoff = 1, .l_linger = 0};
        REQUIRE(::setsockopt(p.client.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
        p.client.close(); // RST
        (void)co_await couring::sleep_for(ctx, 5ms);
        break;
      }
      case ending::take_some_then_close: {
        auto c = co_await p.server.receive(pool);
        require_ok(c);
        for (std::byte x : c->data())
          ok = ok && x == pattern_byte(2, at++);
        CHECK(ok);
        outliving.push_back(std::move(*c));
        break;
      }
      }
      // Closed with its multishot receive armed (or ended) and chunks
      // queued: they go back, the leases' buffers do not.
      p.server.close();
      outliving.push_back(std::move(**a.got));
      outliving.push_back(std::move(**b.got));
      const std::size_t leased = buffers_of(outliving, size);
      auto settled = [&] {
        return pool.available() == count - leased;
      };
      const bool ok_settled = co_await eventually(ctx, settled);
      CAPTURE(leased, pool.available());
      CHECK(ok_settled);
    } // both streams gone; the leases live on
    for (const auto& l : outliving)
      CHECK(!l.empty());
    outliving.clear();
    CHECK(pool.available() == count);
    // Every piece filled a whole buffer: no buffer is half-filled in the
    // kernel, so the next stream must get all of them.
    co_await check_capacity(ctx, listener, pool, true, 3);
  };
  ctx.run(body());
  CHECK(pool.available() == count);
  CHECK(open_fd_count() == fds_before);
}

namespace {

// A bulk stream of pool with two leases on a bundle's first pieces and the
// rest of it queued (nobody waits): what the tests below tear down.
struct bulk_state {
  std::vector<buffer_lease> leases;
};

task<bulk_state> bulk_with_queue(io_context& ctx, tcp_stream& server, tcp_stream& client,
                                 buffer_pool& pool) {
  const std::size_t size = pool.buffer_size();
  const std::size_t count = pool.count();
  bulk_state st;
  require_ok(co_await client.write_all(pattern(1, size)));
  std::size_t first = 0;
  while (first < size) {
    auto l = co_await server.receive(pool);
    require_ok(l);
    first += l->size();
    st.leases.push_back(std::move(*l));
  }
  (void)co_await couring::sleep_for(ctx, 5ms); // the upgrade to bundles settles
  received a, b;
  ctx.spawn(receive_into(server, pool, a));
  ctx.spawn(receive_into(server, pool, b));
  (void)co_await couring::sleep_for(ctx, 2ms);
  require_ok(co_await client.write_all(pattern(2, 8 * size)));
  auto all_in = [&] {
    return a.got.has_value() && b.got.has_value() && pool.available() == count - 9;
  };
  const bool arrived = co_await eventually(ctx, all_in);
  REQUIRE(arrived);
  require_ok(*a.got);
  require_ok(*b.got);
  st.leases.push_back(std::move(**a.got));
  st.leases.push_back(std::move(**b.got));
  co_return st;
}

bool bytes_intact(const bulk_state& st, std::size_t size) {
  // The first buffer's bytes (pattern 1), then the burst's (pattern 2).
  std::size_t first = 0, burst = 0;
  for (const auto& l : st.leases)
    for (std::byte x : l.data()) {
      const bool ok = first < size ? x == pattern_byte(1, first++) : x == pattern_byte(2, burst++);
      if (!ok)
        return false;
    }
  return true;
}

} // namespace

TEST_CASE("pool destroyed: a bulk stream has a bundle queued and leases out; the leases stay "
          "valid, the memory goes with the last lease or stream") {
  const int mode = GENERATE(0, 1, 2, 3);
  const bool leases_last = GENERATE(true, false);
  CAPTURE(mode, leases_last);
  io_context ctx;
  std::optional<buffer_pool> pool;
  pool.emplace(ctx, 16, 512,
               buffer_pool_options{.incremental = (mode & 1) != 0, .bundle = (mode & 2) != 0});
  auto listener = loopback_listener(ctx);
  const auto fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    auto st = co_await bulk_with_queue(ctx, p.server, p.client, *pool);
    const std::byte* mem = st.leases.front().data().data();
    REQUIRE(mapped(mem));
    pool.reset(); // receiver armed, six buffers' worth queued, three leases out
    (void)co_await couring::sleep_for(ctx, 5ms);
    CHECK(mapped(mem));
    CHECK(bytes_intact(st, 512));
    if (leases_last) {
      p.server.close(); // the queued chunks' buffers go back to the stopped pool
      (void)co_await couring::sleep_for(ctx, 5ms);
      CHECK(mapped(mem)); // the leases still hold it
      CHECK(bytes_intact(st, 512));
      st.leases.pop_back();
      CHECK(mapped(mem));
      st.leases.clear();
    } else {
      st.leases.clear();
      (void)co_await couring::sleep_for(ctx, 5ms);
      CHECK(mapped(mem)); // the open stream's receiver still holds the pool
      p.server.close();
    }
    // Every count back to zero: the stopped pool frees its memory.
    auto gone = [&] {
      return !mapped(mem);
    };
    const bool freed = co_await eventually(ctx, gone);
    CHECK(freed);
  };
  ctx.run(body());
  CHECK(open_fd_count() == fds_before);
}

namespace {
// Records a pool's figures when the frame it lives in is destroyed (before
// the pool, declared after it): what the context's teardown did to it.
struct figures_at_teardown {
  figures_at_teardown(buffer_pool* p, buffer_pool_stats* s, std::size_t* a)
      : pool(p), stats(s), available(a) {}
  figures_at_teardown(const figures_at_teardown&) = delete;
  figures_at_teardown& operator=(const figures_at_teardown&) = delete;
  buffer_pool* pool;
  buffer_pool_stats* stats;
  std::size_t* available;
  ~figures_at_teardown() {
    *stats = pool->stats();
    *available = pool->available();
  }
};
} // namespace

TEST_CASE("context destroyed: a bundle queued, leases held, completions with data (with INC, "
          "IORING_CQE_F_BUF_MORE) not yet reaped; the pool's memory is freed") {
  const int mode = GENERATE(0, 1, 2, 3);
  const bool pool_in_frame = GENERATE(true, false);
  const bool inc = (mode & 1) != 0;
  CAPTURE(mode, pool_in_frame);
  const auto fds_before = open_fd_count();
  const std::byte* mem = nullptr;
  buffer_pool_stats at_stop{}, at_teardown{};
  std::size_t available_at_teardown = 0;
  bool epoll = false;
  bool stopped = false;
  {
    io_context ctx;
    epoll = on_epoll(ctx);
    auto listener = loopback_listener(ctx);
    const buffer_pool_options opts{.incremental = inc, .bundle = (mode & 2) != 0};
    std::optional<buffer_pool> outer;
    if (!pool_in_frame)
      outer.emplace(ctx, 16, 512, opts);
    auto holder = [&]() -> task<void> {
      std::optional<buffer_pool> own;
      if (pool_in_frame)
        own.emplace(ctx, 16, 512, opts);
      buffer_pool& pool = pool_in_frame ? *own : *outer;
      std::optional<figures_at_teardown> figures;
      if (pool_in_frame)
        figures.emplace(&pool, &at_teardown, &available_at_teardown);
      auto p = co_await connect_pair(ctx, listener);
      auto st = co_await bulk_with_queue(ctx, p.server, p.client, pool);
      mem = st.leases.front().data().data();
      // A small-message stream: its buffer half-filled, a lease on it.
      auto q = co_await connect_pair(ctx, listener);
      require_ok(co_await q.client.write_all(bytes("abc")));
      auto small = co_await q.server.receive(pool);
      require_ok(small);
      CHECK(text(small->data()) == "abc");
      // Bytes for both streams, sent past the ring: their completions come
      // only with the next entry into the kernel, after run() has stopped
      // (the sleep's request goes in as run() ends).
      REQUIRE(::send(q.client.native_handle(), "defgh", 5, 0) == 5);
      const auto more = pattern(5, 1024);
      REQUIRE(::send(p.client.native_handle(), more.data(), more.size(), 0) == 1024);
      at_stop = pool.stats();
      stopped = true;
      ctx.stop();
      (void)co_await couring::sleep_for(ctx, 10s); // until teardown
      CHECK(false);
    };
    ctx.spawn(holder());
    ctx.run();
    REQUIRE(stopped);
    REQUIRE(mem != nullptr);
    CHECK(mapped(mem));
    outer.reset(); // (as it must, before the context) with leases and receivers alive
  }
  // Every count the pool keeps (buffers out, chunks, receivers) reached
  // zero through the teardown, or the memory would still be there.
  CHECK(!mapped(mem));
  CHECK(open_fd_count() == fds_before);
  if (pool_in_frame) {
    INFO("completions at stop " << at_stop.completions << ", at teardown "
                                << at_teardown.completions);
    // The data sent after the stop was reaped in the teardown (abandoned).
    if (!epoll)
      CHECK(at_teardown.completions > at_stop.completions);
    // When the frame went (its streams and leases first), every buffer
    // was back in the ring: the half-filled one (INC) had never left it.
    CHECK(available_at_teardown == 16);
  }
}

TEST_CASE("INC: a stream closed while a completion with data for its half-filled buffer "
          "(IORING_CQE_F_BUF_MORE) is in the same batch: the buffer stays with the kernel, "
          "counted once") {
  const bool bundle = GENERATE(false, true);
  CAPTURE(bundle);
  io_context ctx;
  buffer_pool pool(ctx, 8, 512, {.incremental = true, .bundle = bundle});
  auto listener = loopback_listener(ctx);
  const bool inc = pool.incremental();
  auto body = [&]() -> task<void> {
    auto r = co_await connect_pair(ctx, listener);
    auto q = co_await connect_pair(ctx, listener);
    // Both receives armed; q's buffer half-filled, a lease on it.
    require_ok(co_await r.client.write_all(bytes("r")));
    auto r1 = co_await r.server.receive(pool);
    require_ok(r1);
    require_ok(co_await q.client.write_all(bytes("abc")));
    auto small = co_await q.server.receive(pool);
    require_ok(small);
    CHECK(text(small->data()) == "abc");
    // r's receive waits; the task it resumes closes q. Bytes for r, then
    // for q: their completions come in one batch, r's first.
    std::optional<result<buffer_lease>> r_got;
    auto closer = [&]() -> task<void> {
      r_got.emplace(co_await r.server.receive(pool));
      q.server.close();
    };
    ctx.spawn(closer());
    (void)co_await couring::sleep_for(ctx, 2ms);
    const auto before = pool.stats();
    REQUIRE(::send(r.client.native_handle(), "s", 1, 0) == 1);
    REQUIRE(::send(q.client.native_handle(), "defgh", 5, 0) == 5);
    (void)co_await couring::sleep_for(ctx, 20ms);
    REQUIRE(r_got.has_value());
    require_ok(*r_got);
    CHECK(text((*r_got)->data()) == "s");
    const auto after = pool.stats();
    INFO("completions in the batch: " << after.completions - before.completions);
    r_got.reset();
    r1->release();
    small->release();
    r.server.close();
    (void)co_await couring::sleep_for(ctx, 5ms);
    CHECK(pool.available() == 8);
    // With INC the half-filled buffer is still in the kernel's ring: the
    // next stream gets the rest of it and every other buffer.
    co_await check_capacity(ctx, listener, pool, !inc, 9);
  };
  ctx.run(body());
  CHECK(pool.available() == 8);
}

TEST_CASE("pool replaced: another made at once (same group id) while the old one's bulk "
          "stream receives; the new pool lends every buffer") {
  const int mode = GENERATE(0, 1, 2, 3);
  CAPTURE(mode);
  io_context ctx;
  const buffer_pool_options opts{.incremental = (mode & 1) != 0, .bundle = (mode & 2) != 0};
  std::optional<buffer_pool> old_pool;
  old_pool.emplace(ctx, 16, 512, opts);
  std::optional<buffer_pool> fresh;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    auto st = co_await bulk_with_queue(ctx, p.server, p.client, *old_pool);
    const unsigned old_id = old_pool->group_id();
    old_pool.reset();
    fresh.emplace(ctx, 16, 512, opts);
    CHECK(fresh->group_id() == old_id);
    // Bytes for the old stream before its cancel has reached the kernel:
    // they must not land in the new pool's buffers.
    const auto more = pattern(6, 2048);
    REQUIRE(::send(p.client.native_handle(), more.data(), more.size(), 0) == 2048);
    (void)co_await couring::sleep_for(ctx, 20ms);
    st.leases.clear();
    p.server.close();
    co_await check_capacity(ctx, listener, *fresh, true, 10);
  };
  ctx.run(body());
  CHECK(fresh->available() == 16);
}

TEST_CASE("INC + bundles: a bundle that starts mid-buffer, the stream closed with it queued; a "
          "second bulk stream's bundles interleave: every byte in order, every buffer back") {
  io_context ctx;
  constexpr std::size_t count = 16;
  constexpr std::size_t size = 512;
  buffer_pool pool(ctx, count, size);
  const bool inc = pool.incremental();
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    // Both turn bulk (a whole buffer each, in one piece), then a gets 100
    // bytes: with INC the head buffer is left a fifth full, and the next
    // bundle starts in its middle.
    std::vector<buffer_lease> held;
    require_ok(co_await a.client.write_all(pattern(21, size)));
    std::size_t got = 0;
    while (got < size) {
      auto l = co_await a.server.receive(pool);
      require_ok(l);
      got += l->size();
      held.push_back(std::move(*l));
    }
    (void)co_await couring::sleep_for(ctx, 5ms);
    require_ok(co_await b.client.write_all(pattern(22, size)));
    got = 0;
    std::size_t b_at = 0;
    bool b_ok = true;
    while (got < size) {
      auto l = co_await b.server.receive(pool);
      require_ok(l);
      got += l->size();
      for (std::byte x : l->data())
        b_ok = b_ok && x == pattern_byte(22, b_at++);
    }
    (void)co_await couring::sleep_for(ctx, 5ms);
    require_ok(co_await a.client.write_all(pattern(20, 100)));
    auto head = co_await a.server.receive(pool);
    require_ok(head);
    CHECK(head->size() == 100);
    held.push_back(std::move(*head));
    (void)co_await couring::sleep_for(ctx, 5ms);
    const auto before = pool.stats();
    const auto burst_a = pattern(23, 4 * size);
    const auto burst_b = pattern(24, 3 * size);
    REQUIRE(::send(a.client.native_handle(), burst_a.data(), 2 * size, 0) ==
            static_cast<ssize_t>(2 * size));
    REQUIRE(::send(b.client.native_handle(), burst_b.data(), 2 * size, 0) ==
            static_cast<ssize_t>(2 * size));
    REQUIRE(::send(a.client.native_handle(), burst_a.data() + 2 * size, 2 * size, 0) ==
            static_cast<ssize_t>(2 * size));
    REQUIRE(::send(b.client.native_handle(), burst_b.data() + 2 * size, size, 0) ==
            static_cast<ssize_t>(size));
    (void)co_await couring::sleep_for(ctx, 20ms);
    const auto after = pool.stats();
    if (pool.bundled())
      CHECK(after.pieces - before.pieces > after.completions - before.completions);
    // a: take one chunk of its burst, keep it, close with the rest queued.
    auto one = co_await a.server.receive(pool);
    require_ok(one);
    bool a_ok = true;
    std::size_t a_at = 0;
    for (std::byte x : one->data())
      a_ok = a_ok && x == pattern_byte(23, a_at++);
    CHECK(a_ok);
    held.push_back(std::move(*one));
    a.server.close();
    // b: everything, in order, while a's leases are still out.
    while (b_at < size + 3 * size) {
      auto l = co_await couring::with_timeout(b.server.receive(pool), scaled(2s));
      require_ok(l);
      REQUIRE(!l->empty());
      for (std::byte x : l->data()) {
        const std::size_t i = b_at++;
        b_ok = b_ok && x == (i < size ? pattern_byte(22, i) : pattern_byte(24, i - size));
      }
    }
    CHECK(b_ok);
    b.server.close();
    (void)co_await couring::sleep_for(ctx, 5ms);
    held.clear();
    CHECK(pool.available() == count);
    // With INC the last buffer may be part-filled: the next stream gets the
    // rest of it and every other buffer.
    co_await check_capacity(ctx, listener, pool, !inc, 25);
  };
  ctx.run(body());
  CHECK(pool.available() == count);
}

TEST_CASE("random: bulk streams closed with bundles in flight or queued, leases kept across "
          "streams and dropped at random; afterwards the pool lends every buffer") {
  const bool inc = GENERATE(false, true);
  CAPTURE(inc);
  io_context ctx;
  constexpr std::size_t count = 32;
  constexpr std::size_t size = 1024;
  buffer_pool pool(ctx, count, size, {.incremental = inc});
  auto listener = loopback_listener(ctx);
  std::mt19937 rng(20261128);
  std::vector<buffer_lease> kept; // leases that outlive their streams
  constexpr std::size_t max_kept = 12;
  int bad = 0;
  int done = 0;
  auto receiver = [&](tcp_stream& server, std::uint64_t seed, std::size_t stop_at) -> task<void> {
    std::size_t at = 0;
    while (at < stop_at) {
      auto l = co_await couring::with_timeout(server.receive(pool), scaled(5s));
      if (!l || l->empty()) {
        ++bad; // the sender sent more than stop_at: neither may happen
        break;
      }
      for (std::byte x : l->data())
        if (x != pattern_byte(seed, at++))
          ++bad;
      if (rng() % 3 == 0 && kept.size() < max_kept)
        kept.push_back(std::move(*l));
      if (!kept.empty() && rng() % 4 == 0)
        kept.erase(kept.begin() + static_cast<long>(rng() % kept.size()));
    }
    // Closed with the rest of the sender's bytes in a bundle, queued, or
    // still in the socket.
    server.close();
    ++done;
  };
  auto sender = [](tcp_stream& client, std::vector<std::byte> data) -> task<void> {
    // Fails (reset) once the receiver has closed early: that is the point.
    (void)co_await client.write_all(data);
  };
  auto body = [&]() -> task<void> {
    for (int round = 0; round < 30; ++round) {
      std::vector<connected_pair> pairs;
      for (int i = 0; i < 4; ++i)
        pairs.push_back(co_await connect_pair(ctx, listener));
      done = 0;
      for (int i = 0; i < 4; ++i) {
        const std::uint64_t seed = static_cast<std::uint64_t>(round * 10 + i);
        const std::size_t total = 4096 + rng() % (28 * 1024);
        // Mostly closed part-way, bundles in flight; now and then at the very end.
        const std::size_t stop_at = rng() % 4 == 0 ? total : 1 + rng() % total;
        ctx.spawn(sender(pairs[i].client, pattern(seed, total)));
        ctx.spawn(receiver(pairs[i].server, seed, stop_at));
      }
      auto all_done = [&] {
        return done == 4;
      };
      const bool finished = co_await eventually(ctx, all_done);
      REQUIRE(finished);
      (void)co_await couring::sleep_for(ctx, 2ms);
    }
    CHECK(bad == 0);
    kept.clear();
    auto whole = [&] {
      return pool.available() == count;
    };
    const bool back = co_await eventually(ctx, whole);
    CHECK(back);
    CHECK(pool.stats().pieces >= pool.stats().completions);
    INFO("completions " << pool.stats().completions << ", pieces " << pool.stats().pieces);
    co_await check_capacity(ctx, listener, pool, !pool.incremental(), 30);
  };
  ctx.run(body());
  CHECK(pool.available() == count);
}
