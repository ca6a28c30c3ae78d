// Zero heap allocations per operation: a read -> write_all echo loop on an
// open stream allocates nothing after its first iteration. This binary
// replaces the global operator new/delete to count every allocation.

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <new>

#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

namespace {
std::atomic<std::size_t> allocations{0};

void* counted(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}

void* counted_aligned(std::size_t n, std::align_val_t al) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  const auto a = static_cast<std::size_t>(al);
  // aligned_alloc wants a size that is a multiple of the alignment.
  return std::aligned_alloc(a, (n + a - 1) / a * a == 0 ? a : (n + a - 1) / a * a);
}
} // namespace

// Every form of the global operator new counts: plain, array, nothrow and
// the aligned ones (a coroutine frame or an awaitable with alignas would use
// those).
void* operator new(std::size_t n) {
  if (void* p = counted(n))
    return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return counted(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return counted(n);
}
void* operator new(std::size_t n, std::align_val_t al) {
  if (void* p = counted_aligned(n, al))
    return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t al) {
  return operator new(n, al);
}
void* operator new(std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  return counted_aligned(n, al);
}
void* operator new[](std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  return counted_aligned(n, al);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}

using couring::io_context;
using couring::task;
using couring::tcp_stream;

namespace {

// The server side, written the way the README tells users to.
task<void> echo(tcp_stream s) {
  std::byte buf[4096];
  for (;;) {
    auto n = co_await s.read(buf);
    if (!n || *n == 0)
      co_return;
    if (!co_await s.write_all(std::span(buf, *n)))
      co_return;
  }
}

} // namespace

TEST_CASE("10,000 echo round trips allocate nothing after the first") {
  io_context ctx;
  auto listener = test_support::loopback_listener(ctx);
  std::size_t during = 0;
  int verified = 0;
  auto client = [&]() -> task<void> {
    auto s = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    auto accepted = co_await listener.accept();
    REQUIRE((s && accepted));
    ctx.spawn(echo(std::move(*accepted)));
    std::byte out[64], in[64];
    std::size_t before = 0;
    for (int i = 0; i <= 10'000; ++i) {
      if (i == 1)
        before = allocations.load(); // after the first round trip: steady state
      for (std::size_t j = 0; j < sizeof out; ++j)
        out[j] = static_cast<std::byte>(i + static_cast<int>(j));
      auto w = co_await s->write_all(out);
      auto r = co_await s->read_exactly(in);
      if (!w || !r)
        break;
      if (std::memcmp(in, out, sizeof in) == 0)
        ++verified;
    }
    during = allocations.load() - before;
  };
  ctx.run(client());
  CHECK(verified == 10'001);
  CHECK(during == 0);
}

namespace {
// The same echo through a buffer pool: each chunk is a lease, answered in
// place and given back.
task<void> pool_echo(tcp_stream s, couring::buffer_pool& pool) {
  for (;;) {
    auto lease = co_await s.receive(pool);
    if (!lease || lease->empty())
      co_return;
    if (!co_await s.write_all(lease->data()))
      co_return;
  }
}
} // namespace

TEST_CASE("10,000 pool-receive echo round trips allocate nothing after the first") {
  // 0: incremental consumption and bundles (where the kernel has them),
  // 1: bundles only, 2: neither.
  const int mode = GENERATE(0, 1, 2);
  CAPTURE(mode);
  io_context ctx;
  couring::buffer_pool pool(ctx, 8, 4096, {.incremental = mode == 0, .bundle = mode != 2});
  auto listener = test_support::loopback_listener(ctx);
  std::size_t during = 0;
  int verified = 0;
  auto client = [&]() -> task<void> {
    auto s = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    auto accepted = co_await listener.accept();
    REQUIRE((s && accepted));
    ctx.spawn(pool_echo(std::move(*accepted), pool));
    std::byte out[64], in[64];
    std::size_t before = 0;
    for (int i = 0; i <= 10'000; ++i) {
      if (i == 1)
        before = allocations.load(); // the receiver record came with the first
      for (std::size_t j = 0; j < sizeof out; ++j)
        out[j] = static_cast<std::byte>(i + static_cast<int>(j));
      auto w = co_await s->write_all(out);
      auto r = co_await s->read_exactly(in);
      if (!w || !r)
        break;
      if (std::memcmp(in, out, sizeof in) == 0)
        ++verified;
    }
    during = allocations.load() - before;
  };
  ctx.run(client());
  CHECK(verified == 10'001);
  CHECK(during == 0);
  CHECK(pool.available() == pool.count());
  // Buffers went round (with INC: 64 round trips to a 4 KiB buffer).
  CHECK(pool.stats().recycled > (pool.incremental() ? 100u : 9'000u));
}

TEST_CASE("10,000 datagram round trips allocate nothing after the first") {
  io_context ctx;
  auto a = couring::udp_socket::bind(ctx, couring::endpoint::ipv4_loopback(0)).value();
  auto b = couring::udp_socket::bind(ctx, couring::endpoint::ipv4_loopback(0)).value();
  const couring::endpoint to_b = b.local_endpoint().value();
  std::size_t during = 0;
  int verified = 0;
  // b echoes each datagram to its sender: receive_from, then send_to.
  auto echo = [&]() -> task<void> {
    std::byte buf[256];
    for (;;) {
      auto d = co_await b.receive_from(buf);
      if (!d || d->size == 0)
        co_return;
      if (!co_await b.send_to(std::span(buf, d->size), d->sender))
        co_return;
    }
  };
  auto client = [&]() -> task<void> {
    std::byte out[64], in[64];
    std::size_t before = 0;
    for (int i = 0; i <= 10'000; ++i) {
      if (i == 1)
        before = allocations.load();
      for (std::size_t j = 0; j < sizeof out; ++j)
        out[j] = static_cast<std::byte>(i + static_cast<int>(j));
      auto w = co_await a.send_to(out, to_b);
      auto r = co_await a.receive_from(in);
      if (!w || !r)
        break;
      if (r->size == sizeof in && std::memcmp(in, out, sizeof in) == 0)
        ++verified;
    }
    during = allocations.load() - before;
    (void)co_await a.send_to(std::span<const std::byte>(), to_b); // ends the echo
  };
  ctx.spawn(echo());
  ctx.run(client());
  ctx.run();
  CHECK(verified == 10'001);
  CHECK(during == 0);
}

TEST_CASE("the allocation counter counts every form of new") {
  const auto before = allocations.load();
  // Calls, not new-expressions: they cannot be elided.
  void* p = ::operator new(16);
  ::operator delete(p);
  void* q = ::operator new(16, std::nothrow);
  ::operator delete(q);
  void* r = ::operator new (64, std::align_val_t{64});
  ::operator delete (r, std::align_val_t{64});
  void* t = ::operator new (64, std::align_val_t{64}, std::nothrow);
  ::operator delete (t, std::align_val_t{64});
  void* u = ::operator new[](8, std::align_val_t{32});
  ::operator delete[](u, std::align_val_t{32});
  CHECK(allocations.load() == before + 5); // the tests here are not vacuous
}

namespace {

constexpr int iterations = 1000;

// Each path below is one coroutine looping over the operation, so that the
// loop itself allocates nothing: the first iteration is left out (it may
// size buffers once), then `iterations` more are counted. "Exactly k per
// iteration" is total == k * iterations.
#define COUNT_STEADY(total, ...)                                                                   \
  do {                                                                                             \
    std::size_t before_ = 0;                                                                       \
    for (int i_ = 0; i_ <= iterations; ++i_) {                                                     \
      if (i_ == 1)                                                                                 \
        before_ = allocations.load();                                                              \
      __VA_ARGS__                                                                                  \
    }                                                                                              \
    total = allocations.load() - before_;                                                          \
  } while (false)

} // namespace

TEST_CASE("other operation paths: exact allocations per operation") {
  using namespace std::chrono_literals;
  io_context ctx;
  auto listener = test_support::loopback_listener(ctx);
  std::size_t timed_read = 0, stopped_read = 0, sleep = 0, accept = 0, timed_write_all = 0;
  int failures = 0;
  auto body = [&]() -> task<void> {
    auto pair = co_await test_support::connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& server = pair.server;
    std::byte out[32]{}, in[32];
    std::stop_source source;

    // A read under a linked timeout: one more SQE, no allocation.
    COUNT_STEADY(timed_read, {
      if (!co_await client.write_all(out))
        ++failures;
      auto r = co_await couring::with_timeout(server.read(in), 5s);
      if (!r)
        ++failures;
    });

    // A read under a stop token: a stop_callback in the awaiter, no allocation.
    COUNT_STEADY(stopped_read, {
      if (!co_await client.write_all(out))
        ++failures;
      auto r = co_await couring::with_stop_token(server.read(in), source.get_token());
      if (!r)
        ++failures;
    });

    COUNT_STEADY(sleep, {
      if (!co_await couring::sleep_for(ctx, 1us))
        ++failures;
    });

    // accept: the client side is a plain socket, so only the accept counts.
    COUNT_STEADY(accept, {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      const auto ep = listener.local_endpoint();
      if (::connect(fd, ep.data(), ep.size()) != 0)
        ++failures;
      auto s = co_await listener.accept();
      if (!s)
        ++failures;
      ::close(fd);
    });

    // write_all under a timeout: write_all is a compound operation (several
    // requests), so with_timeout runs it as a task with a deadline
    // (detail::as_task in timeout.hpp) -- one coroutine frame per call, and
    // nothing else.
    COUNT_STEADY(timed_write_all, {
      auto w = co_await couring::with_timeout(client.write_all(out), 5s);
      if (!w)
        ++failures;
      if (!co_await server.read_exactly(in))
        ++failures;
    });
  };
  ctx.run(body());
  CHECK(failures == 0);
  INFO("with_timeout(read) " << timed_read << ", with_stop_token(read) " << stopped_read
                             << ", sleep_for " << sleep << ", accept " << accept
                             << ", with_timeout(write_all) " << timed_write_all << " in "
                             << iterations << " iterations");
  CHECK(timed_read == 0);
  CHECK(stopped_read == 0);
  CHECK(sleep == 0);
  CHECK(accept == 0);
  CHECK(timed_write_all == 1 * iterations);
}

TEST_CASE("fixed reads/writes and zero-copy sends allocate nothing per operation") {
  couring::io_context_options options;
  options.zero_copy_threshold = 1024; // the 4 KiB writes below go through SEND_ZC
  io_context ctx(options);
  couring::registered_buffers bufs(ctx, 2, 4096);
  auto listener = test_support::loopback_listener(ctx);
  std::size_t fixed = 0, zero_copy = 0;
  int failures = 0;
  auto body = [&]() -> task<void> {
    auto pair = co_await test_support::connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& server = pair.server;
    std::byte out[4096]{}, in[4096];
    COUNT_STEADY(fixed, {
      auto w = co_await couring::write_fixed(client, bufs, bufs.buffer(0));
      if (!w)
        ++failures;
      std::size_t got = 0;
      while (w && got < *w) {
        auto r = co_await couring::read_fixed(server, bufs, bufs.buffer(1).first(*w - got));
        if (!r || *r == 0) {
          ++failures;
          break;
        }
        got += *r;
      }
    });
    // The notification comes with the peer's ACK: the server answers each
    // message so that the ACK rides on the answer (a silent peer would
    // delay it by up to 40 ms, TCP's delayed ACK).
    auto answer = [&]() -> task<void> {
      std::byte one[1]{};
      for (int i = 0; i <= iterations; ++i) {
        if (!co_await server.read_exactly(in) || !co_await server.write_all(one))
          ++failures;
      }
    };
    auto answering = answer();
    ctx.spawn(std::move(answering));
    COUNT_STEADY(zero_copy, {
      auto w = client.write_all(out);
      if (!co_await w || (w.cqe_flags & IORING_CQE_F_NOTIF) == 0)
        ++failures;
      std::byte one[1];
      if (!co_await client.read_exactly(one))
        ++failures;
    });
  };
  ctx.run(body());
  CHECK(failures == 0);
  INFO("fixed write+read " << fixed << ", zero-copy write_all " << zero_copy << " in " << iterations
                           << " iterations");
  CHECK(fixed == 0);
  CHECK(zero_copy == 0);
}

TEST_CASE("direct descriptors: accept, read, write_all and close allocate nothing per "
          "operation (plain descriptors on epoll)") {
  couring::io_context_options options;
  options.direct_descriptor_slots = 8; // single-shot accepts that hold their slot
  io_context ctx(options);
  couring::listen_options lo;
  lo.direct_descriptors = true;
  auto listener = test_support::loopback_listener(ctx, lo);
  std::size_t echo = 0, cycle = 0;
  int failures = 0;
  auto body = [&]() -> task<void> {
    auto pair = co_await test_support::connect_pair(ctx, listener);
    if (pair.server.is_direct() != (ctx.features().backend == couring::backend::io_uring))
      ++failures;
    std::byte out[64]{}, in[64];
    COUNT_STEADY(echo, {
      if (!co_await pair.client.write_all(out) || !co_await pair.server.read_exactly(in) ||
          !co_await pair.server.write_all(in) || !co_await pair.client.read_exactly(out))
        ++failures;
    });
    // A slot taken and given back per connection (the connect's own
    // coroutine frame is counted apart: it is the client's, not the slot's).
    std::size_t connects = 0, before = 0;
    for (int i = 0; i <= iterations; ++i) {
      if (i == 1) // the first round sets up what is reused (records, the slot)
        before = allocations.load();
      const std::size_t a = allocations.load();
      auto c = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
      if (i >= 1)
        connects += allocations.load() - a;
      auto s = co_await listener.accept();
      if (!c || !s || !co_await c->write_all(out) || !co_await s->read_exactly(in))
        ++failures;
    }
    cycle = allocations.load() - before - connects;
  };
  ctx.run(body());
  CHECK(failures == 0);
  INFO("echo " << echo << ", accept+close " << cycle << " in " << iterations << " iterations");
  CHECK(echo == 0);
  CHECK(cycle == 0);
}

TEST_CASE("relay: 1,000 relays of 64 bytes on one stream allocate nothing per relay") {
  io_context ctx;
  auto listener = test_support::loopback_listener(ctx);
  std::size_t relays = 0;
  int failures = 0;
  auto body = [&]() -> task<void> {
    auto pair = co_await test_support::connect_pair(ctx, listener);
    std::byte out[64]{}, in[64];
    // Each relay makes its pipe (two descriptors, no heap), relays exactly
    // 64 bytes back to the client (max_bytes) and closes the pipe again.
    COUNT_STEADY(relays, {
      if (!co_await pair.client.write_all(out))
        ++failures;
      auto r = co_await couring::relay(pair.server, pair.server, sizeof out);
      if (!r || *r != sizeof out)
        ++failures;
      if (!co_await pair.client.read_exactly(in))
        ++failures;
    });
  };
  ctx.run(body());
  CHECK(failures == 0);
  INFO("relay " << relays << " in " << iterations << " iterations");
  CHECK(relays == 0);
}
