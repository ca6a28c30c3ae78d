// The lifetime rules of DESIGN.md, tested: no frame is destroyed while the
// kernel may still write into it, cancellation never loses or duplicates
// data, and tearing a context down cancels and reaps everything.
//
// AddressSanitizer cannot see the kernel write into freed memory, so read
// buffers here come from a canary_pool (support.hpp): when a frame is done
// with its buffer the buffer is filled with a canary and made read-only, and a
// late kernel write would show as a damaged canary.

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <random>
#include <stop_token>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using couring::endpoint;
using couring::io_context;
using couring::result;
using couring::task;
using couring::tcp_listener;
using couring::tcp_stream;
using clock_type = std::chrono::steady_clock;

namespace {

struct frame_counter {
  int* alive;
  explicit frame_counter(int* a) : alive(a) { ++*alive; }
  ~frame_counter() { --*alive; }
  frame_counter(const frame_counter&) = delete;
  frame_counter& operator=(const frame_counter&) = delete;
};

// Retires a canary slot when the frame holding it is destroyed.
struct slot_lease {
  canary_pool* pool;
  std::size_t index;
  ~slot_lease() { pool->retire(index); }
};

task<result<std::size_t>> read_through(tcp_stream& s, std::span<std::byte> buf) {
  co_return co_await s.read(buf);
}

} // namespace

TEST_CASE("destroying a context with 1,000 operations in flight cancels and reaps them all") {
  raise_fd_limit();
  constexpr int per_kind = 250;
  int alive = 0;
  int resumed = 0;
  canary_pool pool(per_kind);
  std::vector<int> peers;
  const auto fds_before = open_fd_count();
  clock_type::time_point t0;
  std::optional<io_context> holder(std::in_place);
  {
    io_context& ctx = *holder;
    // One listener per acceptor: a listener serves all its accepts with one
    // multishot request, and the test wants 250 accept requests in flight.
    std::vector<tcp_listener> acceptors;
    for (int i = 0; i < per_kind; ++i)
      acceptors.push_back(loopback_listener(ctx));
    // A listener that never accepts and whose queue is full: connects hang.
    auto full = tcp_listener::bind(ctx, endpoint::ipv4_loopback(0), {.backlog = 0}).value();
    std::vector<int> fillers;
    for (int i = 0; i < 8; ++i) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      ::connect(fd, full.local_endpoint().data(), full.local_endpoint().size());
      fillers.push_back(fd);
    }
    std::this_thread::sleep_for(50ms);

    auto acceptor = [&](tcp_listener& l) -> task<void> {
      frame_counter fc(&alive);
      (void)co_await l.accept();
      ++resumed;
    };
    auto reader = [&](int fd, std::size_t slot) -> task<void> {
      frame_counter fc(&alive);
      slot_lease lease{&pool, slot};
      tcp_stream s(ctx, fd);
      (void)co_await s.read(pool.slot(slot));
      ++resumed;
    };
    auto connector = [&]() -> task<void> {
      frame_counter fc(&alive);
      (void)co_await tcp_stream::connect(ctx, full.local_endpoint());
      ++resumed;
    };
    auto sleeper = [&]() -> task<void> {
      frame_counter fc(&alive);
      (void)co_await couring::sleep_for(ctx, 1h);
      ++resumed;
    };
    for (int i = 0; i < per_kind; ++i) {
      int fds[2];
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
      peers.push_back(fds[1]);
      ctx.spawn(acceptor(acceptors[static_cast<std::size_t>(i)]));
      ctx.spawn(reader(fds[0], static_cast<std::size_t>(i)));
      ctx.spawn(connector());
      ctx.spawn(sleeper());
    }
    auto stopper = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 100ms);
      ctx.stop();
    };
    ctx.spawn(stopper());
    ctx.run();
    CHECK(alive == 4 * per_kind);
    CHECK(ctx.pending_operations() == 4 * per_kind);
    // Underneath: a request in the ring for each of them.
    CHECK(ctx.submitted_requests() >= 4 * per_kind);
    CHECK(resumed == 0);
    for (int fd : fillers)
      ::close(fd);
    t0 = clock_type::now();
    // The listeners close here (cancelling their accepts), then the context
    // itself is destroyed.
  }
  holder.reset();
  const auto teardown = clock_type::now() - t0;
  INFO("teardown took " << std::chrono::duration_cast<std::chrono::milliseconds>(teardown).count()
                        << " ms");
  CHECK(teardown < scaled(1000ms));
  CHECK(alive == 0);   // every frame the context owned was destroyed
  CHECK(resumed == 0); // and none was resumed while being torn down
  // Late data for the readers finds closed sockets, never a freed buffer.
  for (int fd : peers) {
    [[maybe_unused]] auto n = ::send(fd, "late", 4, MSG_NOSIGNAL | MSG_DONTWAIT);
    ::close(fd);
  }
  std::this_thread::sleep_for(20ms);
  CHECK(pool.damaged(per_kind) == 0);
  CHECK(open_fd_count() == fds_before); // no socket leaked
}

// 20,000 reads, each cancelled 0 to 50 us after it started (half by a linked
// timeout, half by cancelling the task's scope through IORING_OP_ASYNC_CANCEL)
// while the peer streams data. Every read resumes exactly once, with data or
// a cancellation, and the bytes collected are exactly the bytes sent.
TEST_CASE("cancel race: 20,000 cancelled reads lose and duplicate nothing") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  constexpr int iterations = 20'000;
  auto body = [&]() -> task<void> {
    auto c = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    auto s = co_await listener.accept();
    REQUIRE((c && s));
    std::atomic<bool> reader_done{false};
    std::atomic<std::uint64_t> sent{0};
    std::thread peer([&, fd = c->native_handle()] {
      std::byte chunk[97];
      std::uint64_t pos = 0;
      while (!reader_done.load(std::memory_order_relaxed)) {
        for (std::size_t i = 0; i < sizeof chunk; ++i)
          chunk[i] = pattern_byte(99, pos + i);
        const auto n = ::send(fd, chunk, sizeof chunk, MSG_NOSIGNAL);
        if (n <= 0)
          break;
        pos += static_cast<std::uint64_t>(n);
        // Pace the stream so that reads are often pending when cancelled.
        const auto until = clock_type::now() + std::chrono::microseconds(15);
        while (clock_type::now() < until) {
        }
      }
      sent = pos;
      ::shutdown(fd, SHUT_WR);
    });

    std::mt19937 rng(12345);
    std::uniform_int_distribution<int> delay_us(0, 50);
    std::uint64_t received = 0, mismatches = 0;
    int resumes = 0, with_data = 0, cancelled = 0, other = 0;
    std::vector<std::byte> buf(512);
    auto take = [&](std::size_t n) {
      for (std::size_t i = 0; i < n; ++i)
        if (buf[i] != pattern_byte(99, received + i))
          ++mismatches;
      received += n;
    };
    for (int i = 0; i < iterations; ++i) {
      const auto d = std::chrono::microseconds(delay_us(rng));
      result<std::size_t> r = std::size_t{0};
      if (i % 2 == 0)
        r = co_await couring::with_timeout(s->read(buf), d);
      else
        r = co_await couring::with_timeout(read_through(*s, buf), d);
      ++resumes;
      if (r) {
        ++with_data;
        take(*r);
      } else if (r.error() == std::errc::timed_out) {
        ++cancelled;
      } else {
        ++other;
      }
    }
    reader_done = true;
    // Drain what is left; the total must match what the peer sent.
    for (;;) {
      auto r = co_await s->read(buf);
      REQUIRE(r);
      if (*r == 0)
        break;
      take(*r);
    }
    peer.join();
    INFO("reads with data: " << with_data << ", cancelled: " << cancelled);
    CHECK(resumes == iterations);
    CHECK(other == 0);
    CHECK(mismatches == 0);
    CHECK(received == sent.load());
    CHECK(cancelled > 0);
    CHECK(with_data > 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("a stream closed while another task's read is pending: the read ends, memory is safe") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  canary_pool pool(1);
  auto body = [&]() -> task<void> {
    auto c = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    auto s = co_await listener.accept();
    REQUIRE((c && s));
    std::error_code seen;
    bool done = false;
    auto reader = [&]() -> task<void> {
      slot_lease lease{&pool, 0};
      auto r = co_await s->read(pool.slot(0));
      seen = r ? std::error_code{} : r.error();
      done = true;
    };
    ctx.spawn(reader());
    (void)co_await couring::sleep_for(ctx, 10ms); // the read is in flight
    const auto t0 = clock_type::now();
    s->close();
    while (!done)
      (void)co_await couring::nop(ctx);
    CHECK(clock_type::now() - t0 < scaled(1s));
    CHECK(seen == std::errc::operation_canceled);
    // The reader's frame is gone and its buffer retired: data sent now must
    // not land in it.
    auto w = co_await c->write(bytes("too late"));
    (void)w;
    (void)co_await couring::sleep_for(ctx, 20ms);
  };
  ctx.run(body());
  CHECK(pool.damaged(1) == 0);
}

TEST_CASE("cancelling an operation that already completed delivers its data") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto c = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    auto s = co_await listener.accept();
    REQUIRE((c && s));
    auto w = co_await c->write_all(bytes("ready"));
    REQUIRE(w);
    (void)co_await couring::sleep_for(ctx, 5ms); // the data is there before the read
    std::stop_source stop;
    stop.request_stop(); // ...yet the read is cancelled before it is even submitted
    std::byte buf[5];
    auto r = co_await couring::with_stop_token(s->read(buf), stop.get_token());
    CHECK(r.error() == std::errc::operation_canceled);
    // Nothing was consumed by the cancelled read.
    auto again = co_await s->read_exactly(buf);
    REQUIRE(again);
    CHECK(text(buf) == "ready");
    // With a timeout far away and data present, the data wins.
    auto w2 = co_await c->write_all(bytes("more!"));
    REQUIRE(w2);
    auto r2 = co_await couring::with_timeout(s->read(buf), 1ms);
    if (r2) // the read usually wins; if the timer did, nothing was consumed
      CHECK(*r2 > 0);
  };
  ctx.run(body());
}
