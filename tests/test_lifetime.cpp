// The lifetime rules of DESIGN.md, tested: no frame is destroyed while the
// kernel may still write into it, cancellation never loses or duplicates
// data, and tearing a context down cancels and reaps everything.
//
// AddressSanitizer cannot see the kernel write into freed memory, so read
// buffers here come from a canary_pool (support.hpp): when a frame is done
// with its buffer the buffer is filled with a canary, and a late kernel write
// would show as a damaged canary. For that the late write must be possible:
// the socket under the read stays open (a dup held by the test) and the peer
// really sends after the frame is gone. The last test here shows that the
// check catches a read that is left in flight.

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <random>
#include <stop_token>
#include <thread>
#include <vector>

#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
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

// Retires a canary slot when the frame holding it is destroyed, then has the
// peer send at once, while the context that ran the read is still alive: a
// read still in flight on that slot would receive the bytes.
struct slot_lease_then_send {
  canary_pool* pool;
  std::size_t index;
  int peer;
  int* sent_ok;
  ~slot_lease_then_send() {
    pool->retire(index);
    if (::send(peer, "late", 4, MSG_NOSIGNAL | MSG_DONTWAIT) == 4)
      ++*sent_ok;
  }
};

task<result<std::size_t>> read_through(tcp_stream& s, std::span<std::byte> buf, int& resumed) {
  auto r = co_await s.read(buf);
  ++resumed;
  co_return r;
}

task<result<std::size_t>> s_read(tcp_stream& s, std::span<std::byte> buf) {
  co_return co_await s.read(buf);
}

// Bytes readable on fd within a few seconds, up to want.
std::string recv_some(int fd, std::size_t want) {
  std::string got;
  while (got.size() < want) {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 5000) != 1)
      break;
    char buf[64];
    const auto n = ::recv(fd, buf, std::min(sizeof buf, want - got.size()), MSG_DONTWAIT);
    if (n <= 0)
      break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

} // namespace

TEST_CASE("destroying a context with 1,000 operations in flight cancels and reaps them all") {
  raise_fd_limit();
  constexpr int per_kind = 250;
  int alive = 0;
  int resumed = 0;
  canary_pool pool(per_kind);
  std::vector<int> peers;
  // The reading ends, kept open by a dup after the streams close, so that the
  // peers' late sends really arrive.
  std::vector<int> kept;
  int sent_at_teardown = 0;
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
      slot_lease_then_send lease{&pool, slot, peers[slot], &sent_at_teardown};
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
      kept.push_back(::dup(fds[0]));
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
  // Only shows that teardown ends (waiting for 1,000 completions), not how fast.
  CHECK(teardown < scaled(10s));
  CHECK(alive == 0);   // every frame the context owned was destroyed
  CHECK(resumed == 0); // and none was resumed while being torn down
  // Each reader's frame sent "late" to its own socket as it died, and here
  // comes more: the reads were cancelled and reaped, so the bytes wait in the
  // sockets (still open through the dups), never in a retired buffer.
  CHECK(sent_at_teardown == per_kind);
  int sent_after = 0;
  for (int fd : peers)
    if (::send(fd, "late", 4, MSG_NOSIGNAL | MSG_DONTWAIT) == 4)
      ++sent_after;
  CHECK(sent_after == per_kind);
  std::this_thread::sleep_for(20ms);
  CHECK(pool.damaged(per_kind) == 0);
  int delivered = 0;
  for (int fd : kept)
    if (recv_some(fd, 8) == "latelate")
      ++delivered;
  CHECK(delivered == per_kind);
  for (int fd : peers)
    ::close(fd);
  for (int fd : kept)
    ::close(fd);
  CHECK(open_fd_count() == fds_before); // no socket leaked
}

// 20,000 reads, each cancelled 0 to 50 us after it started (half by a linked
// timeout, half by cancelling the task's scope through IORING_OP_ASYNC_CANCEL)
// while the peer streams data. Every read resumes exactly once, with data or
// a cancellation, with nothing of it left in flight, and the bytes collected
// are exactly the bytes sent.
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
    joining_thread peer([&, fd = c->native_handle()] {
      std::byte chunk[97];
      std::uint64_t pos = 0;
      while (!reader_done.load(std::memory_order_relaxed)) {
        for (std::size_t i = 0; i < sizeof chunk; ++i)
          chunk[i] = pattern_byte(99, pos + i);
        // Never blocked in send: if the reader fails, it sets reader_done
        // (the guard below) and this loop ends.
        const auto n = ::send(fd, chunk, sizeof chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN) {
          std::this_thread::yield();
          continue;
        }
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
    // Destroyed before `peer` (declared after it): a failed REQUIRE below
    // stops the peer, and the peer's destructor then joins it.
    struct stop_peer {
      std::atomic<bool>& done;
      ~stop_peer() { done = true; }
    } stop_on_exit{reader_done};

    std::mt19937 rng(12345);
    std::uniform_int_distribution<int> delay_us(0, 50);
    std::uint64_t received = 0, mismatches = 0;
    int with_data = 0, cancelled = 0, other = 0;
    // Resumptions of the read inside read_through (once per odd iteration,
    // never twice), and reads whose request or timer was still in flight
    // when the awaiter resumed (never).
    int through_resumed = 0, left_in_flight = 0;
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
        r = co_await couring::with_timeout(read_through(*s, buf, through_resumed), d);
      if (ctx.pending_operations() != 0)
        ++left_in_flight;
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
    CHECK(through_resumed == iterations / 2);
    CHECK(left_in_flight == 0);
    CHECK(with_data + cancelled == iterations);
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
  int kept = -1; // the server socket, open after the stream closes
  std::string arrived;
  auto body = [&]() -> task<void> {
    auto c = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    auto s = co_await listener.accept();
    REQUIRE((c && s));
    kept = ::dup(s->native_handle());
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
    REQUIRE_FALSE(done);
    const auto t0 = clock_type::now();
    s->close();
    while (!done)
      (void)co_await couring::nop(ctx);
    CHECK(clock_type::now() - t0 < scaled(5s));
    CHECK(seen == std::errc::operation_canceled);
    (void)co_await couring::nop(ctx); // the reader's frame is destroyed, its slot retired
    // The socket is still open (kept): data sent now really arrives, and a
    // read left in flight would put it into the retired slot.
    require_ok(co_await c->write_all(bytes("too late")));
    (void)co_await couring::sleep_for(ctx, 20ms);
    arrived = recv_some(kept, 8);
  };
  ctx.run(body());
  ::close(kept);
  CHECK(arrived == "too late"); // in the socket, not in the buffer
  CHECK(pool.damaged(1) == 0);
}

// The check above can fail: a read submitted on a ring of the test's own (so
// no library cancels it) is left in flight on a slot that is then retired,
// and the peer sends. The kernel writes into the retired slot, and damaged()
// sees it. (A read-only retired slot would turn that write into EFAULT, and
// damaged() would stay 0.)
TEST_CASE("the canary check catches a read left in flight on a retired slot") {
  canary_pool pool(1);
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  io_uring ring{};
  REQUIRE(io_uring_queue_init(4, &ring, 0) == 0);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv(sqe, fds[0], pool.slot(0).data(), pool.slot(0).size(), 0);
  REQUIRE(io_uring_submit(&ring) == 1);
  pool.retire(0); // "the frame is gone" -- but its read is not
  CHECK(pool.damaged(1) == 0);
  REQUIRE(::send(fds[1], "late", 4, MSG_NOSIGNAL) == 4);
  io_uring_cqe* cqe = nullptr;
  REQUIRE(io_uring_wait_cqe(&ring, &cqe) == 0);
  const int res = cqe->res;
  io_uring_cqe_seen(&ring, cqe);
  io_uring_queue_exit(&ring);
  ::close(fds[0]);
  ::close(fds[1]);
  CHECK(res == 4);
  CHECK(pool.damaged(1) == 1);
}

// The data is in the socket and the read is submitted in the same loop turn
// as its cancellation: the kernel completes the read before the cancel finds
// it, and the bytes are delivered. When no data is there, the cancel wins.
// Every byte is accounted for: what the cancelled reads returned plus what
// later reads got is exactly what was sent, in order.
TEST_CASE("cancelling an operation that already completed delivers its data") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  constexpr int iterations = 1000;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    const int peer = p.client.native_handle();
    std::uint64_t sent = 0, received = 0, mismatches = 0;
    int delivered_despite_stop = 0, cancelled = 0, other = 0;
    std::byte buf[64];
    auto take = [&](std::size_t n) {
      for (std::size_t i = 0; i < n; ++i)
        if (buf[i] != pattern_byte(5, received + i))
          ++mismatches;
      received += n;
    };
    auto send_chunk = [&](std::size_t n) {
      std::byte chunk[64];
      for (std::size_t i = 0; i < n; ++i)
        chunk[i] = pattern_byte(5, sent + i);
      REQUIRE(::send(peer, chunk, n, MSG_NOSIGNAL) == static_cast<ssize_t>(n));
      sent += n;
    };
    for (int i = 0; i < iterations; ++i) {
      const bool data_first = i % 2 == 0;
      if (data_first) {
        send_chunk(1 + static_cast<std::size_t>(i) % 32);
      } else {
        // The socket is empty, so the read is still waiting when the cancel
        // comes (a read that lost to a cancel earlier left its data behind).
        int avail = 0;
        while (::ioctl(p.server.native_handle(), FIONREAD, &avail) == 0 && avail > 0) {
          auto d = co_await p.server.read(buf);
          require_ok(d);
          take(*d);
        }
      }
      std::stop_source stop;
      // Runs on the next loop turn, before that turn's submission: the read
      // and its cancellation reach the kernel together.
      auto stopper = [&]() -> task<void> {
        stop.request_stop();
        co_return;
      };
      ctx.spawn(stopper());
      // Half of them on the read itself, half on a task suspended in it.
      result<std::size_t> r = std::size_t{0};
      if ((i / 2) % 2 == 0)
        r = co_await couring::with_stop_token(p.server.read(buf), stop.get_token());
      else
        r = co_await couring::with_stop_token(s_read(p.server, buf), stop.get_token());
      const bool stop_was_requested = stop.stop_requested();
      if (r) {
        take(*r);
        if (stop_was_requested)
          ++delivered_despite_stop;
      } else if (r.error() == std::errc::operation_canceled) {
        ++cancelled;
      } else {
        ++other;
      }
      if (!data_first) // sent after a cancelled read: the next read gets it
        send_chunk(1 + static_cast<std::size_t>(i) % 32);
    }
    ::shutdown(peer, SHUT_WR);
    for (;;) {
      auto r = co_await p.server.read(buf);
      require_ok(r);
      if (*r == 0)
        break;
      take(*r);
    }
    INFO("delivered although the stop was requested: " << delivered_despite_stop
                                                       << ", cancelled: " << cancelled);
    CHECK(other == 0);
    CHECK(mismatches == 0);
    CHECK(received == sent);           // nothing consumed by a cancelled read was lost
    CHECK(delivered_despite_stop > 0); // the race really happened, in both directions
    CHECK(cancelled > 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}
