// Zero heap allocations per operation: a read -> write_all echo loop on an
// open stream allocates nothing after its first iteration. This binary
// replaces the global operator new/delete to count every allocation.

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <new>

#include <couring/couring.hpp>

#include "support.hpp"

namespace {
std::atomic<std::size_t> allocations{0};
}

void* operator new(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n))
    return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept {
  return operator new(n, t);
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

TEST_CASE("the allocation counter counts") {
  const auto before = allocations.load();
  void* p = ::operator new(16); // a call, not a new-expression: cannot be elided
  ::operator delete(p);
  CHECK(allocations.load() == before + 1); // the test above is not vacuous
}
