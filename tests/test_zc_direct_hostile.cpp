// Hostile cases for zero-copy write_all (the buffer is the kernel's until the
// notification CQE), registered buffers and direct descriptors: teardown,
// cancellation and slot exhaustion at the worst moments. Every test runs on
// both backends (on epoll a zero-copy send is a copying send followed at once
// by its notification, and listeners hand out plain descriptors).

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <stop_token>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using test_support::pattern;
using test_support::require_ok;

namespace {

using clock_type = std::chrono::steady_clock;

couring::io_context_options zero_copy_from(std::size_t threshold) {
  couring::io_context_options o;
  o.zero_copy_threshold = threshold;
  return o;
}

// A blocking socket connected to listener, owned by the test (not by any
// context): a peer that reads only when the test says so, and outlives the
// context.
int raw_peer(const couring::tcp_listener& listener, int rcvbuf = 0) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  if (rcvbuf > 0) // before connect: the window is scaled from it
    REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(listener.local_endpoint().port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

// Sets *flag when the frame holding it is destroyed.
struct frame_gone {
  bool* flag;
  ~frame_gone() { *flag = true; }
};

} // namespace

// --- zero-copy write_all --------------------------------------------------------

TEST_CASE("zero-copy write_all stalled on a peer that never reads: the context's teardown is "
          "prompt and frees the frame") {
  const int repeat = GENERATE(0, 1);
  // 0: the send request itself is still in the kernel (64 MiB: far more than
  // the socket buffers hold) when the context goes; 1: the request is done
  // (256 KiB fit into a large send buffer) but its pages sit in the send
  // queue behind a closed window, so the notification is what is awaited.
  INFO((repeat == 0 ? "send in flight" : "only the notification awaited"));
  const std::size_t total = repeat == 0 ? (64u << 20) : (256u << 10);
  const std::vector<std::byte> data = pattern(31, total);
  int peer = -1;
  bool gone = false;
  bool write_ended = false;
  auto started = clock_type::now();
  {
    couring::io_context ctx(zero_copy_from(16 * 1024));
    auto listener = test_support::loopback_listener(ctx);
    peer = raw_peer(listener, 4096);
    auto writer = [&](couring::tcp_stream s) -> couring::task<void> {
      frame_gone g{&gone};
      const int sndbuf = 4 << 20;
      ::setsockopt(s.native_handle(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
      auto w = s.write_all(data);
      (void)co_await w;
      write_ended = true; // never: teardown destroys the frame without resuming it
    };
    auto body = [&]() -> couring::task<void> {
      auto s = co_await listener.accept();
      require_ok(s);
      ctx.spawn(writer(std::move(*s)));
      co_await couring::sleep_for(ctx, 200ms); // the writer is stuck by now
    };
    ctx.run(body());
    started = clock_type::now();
  } // ~io_context: drain, then destroy the writer's frame
  const auto teardown = clock_type::now() - started;
  ::close(peer);
  if (repeat == 0) // on epoll the 256 KiB fit into the send buffer: a copying send ends
    CHECK_FALSE(write_ended);
  CHECK(gone); // not leaked: every CQE of the send, the notification too, came in
  CHECK(teardown < test_support::scaled(3000ms));
}

TEST_CASE("zero-copy write_all with_stop_token: stopped while stalled, ends once, after the "
          "notification; the buffer is the caller's again") {
  couring::io_context ctx(zero_copy_from(16 * 1024));
  auto listener = test_support::loopback_listener(ctx);
  std::vector<std::byte> data = pattern(32, 64u << 20);
  int resumed = 0;
  auto body = [&]() -> couring::task<void> {
    auto p = co_await test_support::connect_pair(ctx, listener);
    const std::size_t background = ctx.submitted_requests();
    std::stop_source stop;
    auto stopper = [&]() -> couring::task<void> {
      co_await couring::sleep_for(ctx, 100ms);
      stop.request_stop();
    };
    auto st = stopper();
    ctx.spawn(std::move(st));
    const auto before = clock_type::now();
    auto r = co_await couring::with_stop_token(p.client.write_all(data), stop.get_token());
    ++resumed;
    REQUIRE(!r);
    CHECK(r.error() == std::errc::operation_canceled);
    CHECK(clock_type::now() - before < test_support::scaled(3000ms));
    // No CQE of the send is still due: the notification came before we resumed.
    CHECK(ctx.submitted_requests() == background);
    std::memset(data.data(), 0, data.size());
    // The connection was reset to get the pages back (io_uring); the peer sees
    // the bytes that made it, in order, then the reset. On epoll the send is
    // plain and simply stops.
    std::vector<std::byte> got(1 << 20);
    std::size_t received = 0;
    const auto expect = pattern(32, 64u << 20);
    bool in_order = true;
    for (;;) {
      auto n = co_await couring::with_timeout(p.server.read(got), 500ms);
      if (!n || *n == 0)
        break;
      if (std::memcmp(got.data(), expect.data() + received, *n) != 0)
        in_order = false;
      received += *n;
    }
    CHECK(in_order);
    CHECK(received < expect.size());
  };
  ctx.run(body());
  CHECK(resumed == 1);
}

TEST_CASE("zero-copy write_all closed while stalled: transferred() counts every byte the peer "
          "received") {
  couring::io_context ctx(zero_copy_from(16 * 1024));
  auto listener = test_support::loopback_listener(ctx);
  const std::vector<std::byte> data = pattern(34, 64u << 20); // far more than the buffers hold
  auto body = [&]() -> couring::task<void> {
    auto p = co_await test_support::connect_pair(ctx, listener);
    ctx.spawn(test_support::close_after(ctx, p.client, 100ms));
    auto w = p.client.write_all(data);
    auto r = co_await w;
    REQUIRE(!r);
    CHECK(r.error() == std::errc::operation_canceled);
    // What the peer gets: a prefix of data, then the reset (or the end).
    std::vector<std::byte> got(1 << 20);
    std::size_t received = 0;
    bool prefix = true;
    for (;;) {
      auto n = co_await couring::with_timeout(p.server.read(got), 1s);
      if (!n || *n == 0)
        break;
      if (received + *n > data.size() || std::memcmp(got.data(), data.data() + received, *n) != 0)
        prefix = false;
      received += *n;
    }
    INFO("received " << received << ", transferred() " << w.transferred());
    CHECK(prefix);
    CHECK(received > 0);
    CHECK(w.transferred() >= received); // the kernel took at least what arrived
    CHECK(w.transferred() < data.size());
  };
  ctx.run(body());
}

TEST_CASE("zero-copy write_all with_timeout between the data CQE and the notification: "
          "timed_out once, the connection reset, nothing left in the ring") {
  couring::io_context ctx(zero_copy_from(16 * 1024));
  auto listener = test_support::loopback_listener(ctx);
  const std::vector<std::byte> data = pattern(35, 256u << 10);
  const int peer = raw_peer(listener, 4096); // never reads: the pages stay queued
  int resumed = 0;
  auto body = [&]() -> couring::task<void> {
    auto s = co_await listener.accept();
    require_ok(s);
    const int sndbuf = 4 << 20; // the whole buffer is queued at once: the data CQE comes
    ::setsockopt(s->native_handle(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    const std::size_t background = ctx.submitted_requests();
    const auto before = clock_type::now();
    auto r = co_await couring::with_timeout(s->write_all(data), 200ms);
    ++resumed;
    CHECK(clock_type::now() - before < test_support::scaled(3000ms));
    CHECK(ctx.submitted_requests() == background);
    if (ctx.features().backend == couring::backend::io_uring) {
      REQUIRE(!r);
      CHECK(r.error() == std::errc::timed_out);
      // The pages were got back by a reset: the peer reads some bytes of
      // data, in order, then the reset.
      std::vector<std::byte> got(data.size());
      std::size_t n = 0;
      ssize_t k = 0;
      while ((k = ::recv(peer, got.data() + n, got.size() - n, MSG_DONTWAIT)) > 0)
        n += static_cast<std::size_t>(k);
      CHECK(k < 0);
      CHECK(errno == ECONNRESET);
      CHECK(n < data.size());
      CHECK(std::memcmp(got.data(), data.data(), n) == 0);
    } else {
      require_ok(r); // epoll: a copying send, done once queued
    }
    // The same cut by a close, on a named awaitable: the kernel took the
    // whole buffer (the data CQE said so) before the close came.
    const int peer2 = raw_peer(listener, 4096);
    auto s2 = co_await listener.accept();
    require_ok(s2);
    ::setsockopt(s2->native_handle(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    ctx.spawn(test_support::close_after(ctx, *s2, 200ms));
    auto w = s2->write_all(data);
    auto r2 = co_await w;
    ::close(peer2);
    if (ctx.features().backend == couring::backend::io_uring) {
      REQUIRE(!r2);
      CHECK(r2.error() == std::errc::operation_canceled);
      CHECK(w.transferred() == data.size());
      CHECK(w.outstanding == 0);
    } else {
      require_ok(r2);
    }
  };
  ctx.run(body());
  ::close(peer);
  CHECK(resumed == 1);
}

TEST_CASE("zero-copy write_all resumes only once the peer holds every byte: the buffer "
          "overwritten at once changes nothing the peer reads") {
  couring::io_context ctx(zero_copy_from(16 * 1024));
  auto listener = test_support::loopback_listener(ctx);
  constexpr std::size_t total = 1u << 20;
  std::vector<std::byte> data = pattern(33, total);
  const std::vector<std::byte> expect = data;
  const int peer = raw_peer(listener, 64 << 10); // a small window: the send queue holds the pages
  timeval bound{.tv_sec = 5, .tv_usec = 0};      // the reader thread never hangs the test
  REQUIRE(::setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound) == 0);
  auto body = [&]() -> couring::task<void> {
    auto s = co_await listener.accept();
    require_ok(s);
    const int sndbuf = 4 << 20;
    ::setsockopt(s->native_handle(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    // A reader on its own thread that starts late and reads slowly.
    std::vector<std::byte> got(total);
    std::atomic<std::size_t> peer_got{0};
    test_support::joining_thread reader([&] {
      std::this_thread::sleep_for(100ms);
      while (peer_got < total) {
        const auto r =
            ::read(peer, got.data() + peer_got, std::min<std::size_t>(16384, total - peer_got));
        if (r <= 0)
          break;
        peer_got += static_cast<std::size_t>(r);
      }
    });
    auto w = s->write_all(data);
    bool done = false;
    auto watchdog = [&]() -> couring::task<void> {
      co_await couring::sleep_for(ctx, 10s); // bounded even if the send never ends
      if (!done)
        s->close();
    };
    auto wd = watchdog();
    ctx.spawn(std::move(wd));
    auto r = co_await w;
    done = true;
    INFO("sent " << w.transferred() << ", the peer got " << peer_got.load());
    require_ok(r);
    if (ctx.features().backend == couring::backend::io_uring)
      CHECK((w.cqe_flags & IORING_CQE_F_NOTIF) != 0);
    std::memset(data.data(), 0xEE, data.size()); // the caller's again
    reader.join();
    CHECK(got == expect);
  };
  ctx.run(body());
  ::close(peer);
}

// --- direct descriptors ------------------------------------------------------------

namespace {
bool direct_expected(const couring::io_context& ctx) {
  return ctx.features().backend == couring::backend::io_uring;
}

couring::tcp_listener direct_listener(couring::io_context& ctx) {
  couring::listen_options o;
  o.direct_descriptors = true;
  return test_support::loopback_listener(ctx, o);
}
} // namespace

TEST_CASE("direct descriptors: a full file table loses no connection; the listener serves the "
          "waiting one as soon as a slot is free") {
  couring::io_context_options options;
  options.direct_descriptor_slots = 2;
  couring::io_context ctx(options);
  auto listener = direct_listener(ctx);
  auto body = [&]() -> couring::task<void> {
    auto c1 = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(c1);
    auto s1 = co_await listener.accept();
    require_ok(s1);
    auto c2 = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(c2);
    auto s2 = co_await listener.accept();
    require_ok(s2);
    CHECK(s2->is_direct() == direct_expected(ctx));
    // The table is full. A third client connects and says something.
    auto c3 = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(c3);
    const auto hello = pattern(41, 100);
    require_ok(co_await c3->write_all(hello));
    if (direct_expected(ctx)) {
      // Nothing can be accepted now: a bounded wait, never a hang. (An
      // error such as ENFILE is a clear answer too.)
      auto early = co_await couring::with_timeout(listener.accept(), 300ms);
      REQUIRE(!early);
      INFO(early.error().message());
    }
    co_await couring::sleep_for(ctx, 300ms); // several back-off rounds while full
    s1->close();
    // A slot is free: the third client is served, with what it said.
    auto s3 = co_await couring::with_timeout(listener.accept(), 3s);
    require_ok(s3);
    std::vector<std::byte> got(hello.size());
    auto r = co_await couring::with_timeout(s3->read_exactly(got), 2s);
    require_ok(r);
    CHECK(got == hello);
    // And the listener keeps working: another connection, another slot.
    s2->close();
    auto c4 = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(c4);
    auto s4 = co_await couring::with_timeout(listener.accept(), 3s);
    require_ok(s4);
    require_ok(co_await c4->write_all(hello));
    auto r4 = co_await couring::with_timeout(s4->read_exactly(got), 2s);
    require_ok(r4);
    CHECK(got == hello);
  };
  ctx.run(body());
}

TEST_CASE("direct descriptors: a stream closed with a read and a write_all in flight; the next "
          "stream on the same slot sees none of their data or errors") {
  couring::io_context_options options;
  options.direct_descriptor_slots = 1; // the new stream gets the very slot
  couring::io_context ctx(options);
  auto listener = direct_listener(ctx);
  auto body = [&]() -> couring::task<void> {
    for (std::uint64_t round = 0; round < 50; ++round) {
      auto c1 = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
      require_ok(c1);
      auto s1 = co_await couring::with_timeout(listener.accept(), 3s);
      require_ok(s1);
      const auto big = pattern(round, 8 << 20); // stalls: c1 does not read
      std::byte rbuf[256];
      std::fill(std::begin(rbuf), std::end(rbuf), std::byte{0});
      couring::result<std::size_t> rr = std::size_t{0};
      bool read_done = false, write_done = false;
      couring::result<void> wr;
      auto reader = [&]() -> couring::task<void> {
        rr = co_await s1->read(rbuf);
        read_done = true;
      };
      auto writer = [&]() -> couring::task<void> {
        wr = co_await s1->write_all(big);
        write_done = true;
      };
      auto rt = reader();
      ctx.spawn(std::move(rt));
      auto wt = writer();
      ctx.spawn(std::move(wt));
      co_await couring::sleep_for(ctx, 2ms);
      s1->close();
      // At once: the next connection, on the slot the old requests held.
      auto c2 = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
      require_ok(c2);
      auto s2 = co_await couring::with_timeout(listener.accept(), 3s);
      require_ok(s2);
      const auto msg = pattern(1000 + round, 200);
      require_ok(co_await c2->write_all(msg));
      std::vector<std::byte> got(msg.size());
      auto r2 = co_await couring::with_timeout(s2->read_exactly(got), 2s);
      require_ok(r2);
      CHECK(got == msg); // nothing of c1's stream, nothing missing
      // The old operations ended, cancelled, and wrote nothing into rbuf.
      REQUIRE(read_done);
      REQUIRE(write_done);
      REQUIRE(!rr);
      CHECK(rr.error() == std::errc::operation_canceled);
      REQUIRE(!wr);
      CHECK(wr.error() == std::errc::operation_canceled);
      CHECK(std::all_of(std::begin(rbuf), std::end(rbuf),
                        [](std::byte b) { return b == std::byte{0}; }));
      // The new stream's writes go to c2, never to c1.
      require_ok(co_await s2->write_all(msg));
      auto back = co_await couring::with_timeout(c2->read_exactly(got), 2s);
      require_ok(back);
      CHECK(got == msg);
    }
  };
  ctx.run(body());
}

TEST_CASE("direct descriptors with single-shot accepts (multishot_accept off): real slots, "
          "contents checked") {
  couring::io_context_options options;
  options.multishot_accept = false;
  options.direct_descriptor_slots = 8;
  couring::io_context ctx(options);
  auto listener = direct_listener(ctx);
  const int fds_before = static_cast<int>(test_support::open_fd_count());
  auto body = [&]() -> couring::task<void> {
    for (std::uint64_t i = 0; i < 20; ++i) {
      auto c = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
      require_ok(c);
      auto s = co_await couring::with_timeout(listener.accept(), 3s);
      require_ok(s);
      CHECK(s->is_direct() == direct_expected(ctx));
      if (s->is_direct()) {
        // A slot of the 8-slot table, not a descriptor number.
        CHECK(s->handle().fd() >= 0);
        CHECK(s->handle().fd() < 8);
      }
      const auto msg = pattern(200 + i, 3000);
      require_ok(co_await c->write_all(msg));
      std::vector<std::byte> got(msg.size());
      auto r = co_await couring::with_timeout(s->read_exactly(got), 2s);
      require_ok(r);
      CHECK(got == msg);
      require_ok(co_await s->write_all(msg));
      auto back = co_await couring::with_timeout(c->read_exactly(got), 2s);
      require_ok(back);
      CHECK(got == msg);
    }
  };
  ctx.run(body());
  // Accepted connections live in the table: no descriptor was leaked.
  CHECK(static_cast<int>(test_support::open_fd_count()) <= fds_before);
}

// --- registered buffers --------------------------------------------------------------

TEST_CASE("registered buffers: an operation made before its buffers were unregistered fails "
          "with not_registered, and nothing lands in the memory mapped there since") {
  couring::io_context ctx;
  auto bufs = std::make_unique<couring::registered_buffers>(ctx, 1, 4096);
  auto ends = couring::pipe(ctx);
  require_ok(ends);
  auto& rd = ends->first;
  auto& wr = ends->second;
  auto body = [&]() -> couring::task<void> {
    auto stale_read = couring::read_fixed(rd, *bufs, bufs->buffer(0));
    void* const old = bufs->buffer(0).data();
    bufs.reset(); // unregistered, unmapped
    // A canary where the buffer was: memory the process has reused.
    void* p = ::mmap(old, 4096, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    REQUIRE(p == old);
    std::memset(p, 0xA5, 4096);
    const auto msg = pattern(51, 100);
    require_ok(co_await wr.write_all(msg)); // something to read right away
    auto r = co_await stale_read;
    const bool intact = std::all_of(static_cast<std::byte*>(p), static_cast<std::byte*>(p) + 4096,
                                    [](std::byte b) { return b == std::byte{0xA5}; });
    ::munmap(p, 4096);
    REQUIRE(!r);
    CHECK(r.error() == couring::error::not_registered);
    CHECK(intact);
    // A new set works, and the bytes are all still in the pipe.
    couring::registered_buffers fresh(ctx, 1, 4096);
    auto n = co_await couring::read_fixed(rd, fresh, fresh.buffer(0));
    require_ok(n);
    REQUIRE(*n == msg.size());
    CHECK(std::memcmp(fresh.buffer(0).data(), msg.data(), msg.size()) == 0);
  };
  ctx.run(body());
}
