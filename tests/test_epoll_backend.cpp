// The epoll backend's emulator (lib/detail/epoll_emulator.hpp) at its edges:
// linked timeouts in both orders, cancelling a request that waits for
// readiness, closing an object while it waits and reusing its number at
// once, a peer reset under a waiting write, a flood into a multishot accept,
// a CQ too small for a burst (the overflow list), timers in the heap.
// Every context here asks for epoll explicitly, so these run on both suite
// runs (scripts/dev test).

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <span>
#include <stop_token>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <couring/couring.hpp>
#include <couring/detail/io_awaitable.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using couring::io_context;
using couring::task;
using couring::tcp_stream;

namespace {

couring::io_context_options epoll_options(unsigned sq = 0, unsigned cq = 0) {
  couring::io_context_options o;
  o.backend = couring::backend::epoll;
  if (sq != 0)
    o.sq_entries = sq;
  if (cq != 0)
    o.cq_entries = cq;
  return o;
}

// A connected pair of local stream sockets: ours adopted by ctx, the peer raw.
struct pair {
  tcp_stream mine;
  int peer = -1;
  explicit pair(io_context& ctx) {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    mine = tcp_stream(ctx, fds[0]);
    peer = fds[1];
  }
  ~pair() {
    if (peer >= 0)
      ::close(peer);
  }
};

using clock_type = std::chrono::steady_clock;

} // namespace

TEST_CASE("epoll: the backend is the emulator, named with its reason") {
  io_context ctx(epoll_options());
  CHECK(ctx.features().backend == couring::backend::epoll);
  CHECK(ctx.features().backend_reason == "io_context_options::backend = epoll");
  CHECK(ctx.ring().emulated());
  CHECK(ctx.features().sq_entries >= 256);
  CHECK(ctx.features().cq_entries > ctx.features().sq_entries);
}

TEST_CASE("epoll: a linked timeout, both orders") {
  io_context ctx(epoll_options());
  pair p(ctx);
  auto body = [&]() -> task<void> {
    std::byte buf[16];
    // The timer first: the read is cancelled, with_timeout reports timed_out.
    const auto t0 = clock_type::now();
    auto timed = co_await couring::with_timeout(p.mine.read(buf), 30ms);
    CHECK(timed.error() == std::errc::timed_out);
    CHECK(clock_type::now() - t0 >= 30ms);
    // The read first, while it waits for readiness: its data, no timeout.
    auto write_later = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 20ms);
      CHECK(::write(p.peer, "abc", 3) == 3);
    };
    auto read_with_timeout = [&]() -> task<couring::result<std::size_t>> {
      co_return co_await couring::with_timeout(p.mine.read(buf), 5s);
    };
    auto [got, ignored] = co_await couring::when_all(read_with_timeout(), write_later());
    require_ok(got);
    CHECK(*got == 3);
    // The read first, at submission (the data is there already).
    CHECK(::write(p.peer, "de", 2) == 2);
    auto at_once = co_await couring::with_timeout(p.mine.read(buf), 5s);
    require_ok(at_once);
    CHECK(*at_once == 2);
    CHECK(std::memcmp(buf, "de", 2) == 0);
  };
  ctx.run(body());
  // Neither the cancelled timers nor the reads left anything behind.
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("epoll: a request waiting for readiness is cancelled by a stop token, the next works") {
  io_context ctx(epoll_options());
  pair p(ctx);
  auto body = [&]() -> task<void> {
    std::byte buf[8];
    std::stop_source stop;
    auto stop_later = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 20ms);
      stop.request_stop();
    };
    auto reader = [&]() -> task<couring::result<std::size_t>> {
      co_return co_await couring::with_stop_token(p.mine.read(buf), stop.get_token());
    };
    auto [stopped, ignored] = co_await couring::when_all(reader(), stop_later());
    CHECK(stopped.error() == std::errc::operation_canceled);
    // The cancelled read took nothing: the next one gets the bytes.
    CHECK(::write(p.peer, "xyz", 3) == 3);
    auto next = co_await couring::with_timeout(p.mine.read(buf), 5s);
    require_ok(next);
    CHECK(*next == 3);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("epoll: close while a read and a write wait, and the number is reused at once") {
  io_context ctx(epoll_options());
  for (int round = 0; round < 20; ++round) {
    INFO("round " << round);
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    const int number = fds[0];
    // A dup keeps the open file alive after the stream closes its
    // descriptor: epoll would keep reporting it under the old number
    // unless the emulator removed it before close(2).
    const int keep = ::dup(fds[0]);
    auto body = [&]() -> task<void> {
      tcp_stream s(ctx, fds[0]);
      // Fill the send buffer so that a write waits for EPOLLOUT.
      std::vector<std::byte> big(1 << 20);
      std::byte buf[8];
      auto reader = [&]() -> task<couring::result<std::size_t>> {
        co_return co_await s.read(buf);
      };
      auto writer = [&]() -> task<couring::result<void>> {
        co_return co_await s.write_all(big);
      };
      auto closer = [&]() -> task<void> {
        (void)co_await couring::sleep_for(ctx, 5ms);
        s.close();
      };
      auto [r, w, c] = co_await couring::when_all(reader(), writer(), closer());
      CHECK(r.error() == std::errc::operation_canceled);
      CHECK(w.error() == std::errc::operation_canceled);
      // The number is free again: a new socket gets it, and works through
      // the same emulator (its readiness is not the old file's).
      int again[2];
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, again) == 0);
      CHECK(again[0] == number);
      tcp_stream fresh(ctx, again[0]);
      auto write_later = [&]() -> task<void> {
        (void)co_await couring::sleep_for(ctx, 5ms);
        CHECK(::write(again[1], "new", 3) == 3);
        // The old file (alive through the dup) gets data too: nobody reads it.
        CHECK(::write(fds[1], "old", 3) == 3);
      };
      auto read_fresh = [&]() -> task<couring::result<std::size_t>> {
        co_return co_await couring::with_timeout(fresh.read(buf), 5s);
      };
      auto [got, ignored] = co_await couring::when_all(read_fresh(), write_later());
      require_ok(got);
      CHECK(*got == 3);
      CHECK(std::memcmp(buf, "new", 3) == 0);
      ::close(again[1]);
    };
    ctx.run(body());
    ::close(keep);
    ::close(fds[1]);
  }
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("epoll: a peer reset while a write waits for EPOLLOUT ends the write") {
  io_context ctx(epoll_options());
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto client = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(client);
    auto server = co_await couring::with_timeout(listener.accept(), 5s);
    require_ok(server);
    std::vector<std::byte> big(16 << 20); // far more than the buffers hold
    auto writer = [&]() -> task<couring::result<void>> {
      co_return co_await couring::with_timeout(server->write_all(big), 10s);
    };
    auto resetter = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 30ms);
      linger l{.l_onoff = 1, .l_linger = 0};
      ::setsockopt(client->native_handle(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
      client->close(); // RST
    };
    const auto t0 = clock_type::now();
    auto [w, ignored] = co_await couring::when_all(writer(), resetter());
    REQUIRE_FALSE(w.has_value());
    INFO(w.error().message());
    CHECK((w.error() == std::errc::connection_reset || w.error() == std::errc::broken_pipe));
    CHECK(clock_type::now() - t0 < 5s);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("epoll: a flood of connections into a multishot accept, with a CQ far too small") {
  // 4 SQ slots, 8 CQ slots: one readiness event brings hundreds of
  // connections, whose CQEs wait in the overflow list.
  io_context ctx(epoll_options(4, 8));
  REQUIRE(ctx.multishot_accept_supported());
  auto listener = loopback_listener(ctx, {.backlog = 1024});
  constexpr int n = 400;
  std::vector<int> clients;
  for (int i = 0; i < n; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    REQUIRE(::connect(fd, listener.local_endpoint().data(), listener.local_endpoint().size()) == 0);
    // Each client says who it is, so a lost or doubled connection shows.
    REQUIRE(::write(fd, &i, sizeof i) == sizeof i);
    clients.push_back(fd);
  }
  std::vector<int> seen(n, 0);
  auto body = [&]() -> task<void> {
    for (int i = 0; i < n; ++i) {
      INFO("connection " << i);
      auto s = co_await couring::with_timeout(listener.accept(), 5s);
      require_ok(s);
      int who = -1;
      auto got = co_await couring::with_timeout(
          s->read_exactly(std::as_writable_bytes(std::span(&who, 1))), 5s);
      INFO("read");
      require_ok(got);
      REQUIRE(who >= 0);
      REQUIRE(who < n);
      ++seen[static_cast<std::size_t>(who)];
    }
  };
  ctx.run(body());
  CHECK(std::count(seen.begin(), seen.end(), 1) == n);
  for (int fd : clients)
    ::close(fd);
}

TEST_CASE("epoll: a burst of completions larger than the CQ loses none") {
  io_context ctx(epoll_options(2, 2));
  constexpr int tasks = 300;
  int done = 0;
  auto one = [&]() -> task<void> {
    for (int i = 0; i < 10; ++i) {
      auto r = co_await couring::nop(ctx);
      require_ok(r);
    }
    ++done;
  };
  for (int i = 0; i < tasks; ++i)
    ctx.spawn(one());
  ctx.run();
  CHECK(done == tasks);
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("epoll: timers in the heap fire in deadline order, never early") {
  io_context ctx(epoll_options());
  std::vector<int> order;
  const auto t0 = clock_type::now();
  bool early = false;
  auto sleeper = [&](int ms) -> task<void> {
    auto r = co_await couring::sleep_for(ctx, std::chrono::milliseconds(ms));
    require_ok(r);
    if (clock_type::now() - t0 < std::chrono::milliseconds(ms))
      early = true;
    order.push_back(ms);
  };
  // Deadlines 2 ms apart, started in a scrambled order.
  for (int k = 0; k < 40; ++k)
    ctx.spawn(sleeper(((k * 17) % 40) * 2 + 1));
  // An absolute deadline on the realtime clock too.
  bool abs_ok = false;
  auto wall = [&]() -> task<void> {
    auto r = co_await couring::sleep_until(ctx, std::chrono::system_clock::now() + 20ms);
    abs_ok = r.has_value() && clock_type::now() - t0 >= 19ms;
  };
  ctx.spawn(wall());
  ctx.run();
  CHECK_FALSE(early);
  CHECK(abs_ok);
  REQUIRE(order.size() == 40);
  CHECK(std::is_sorted(order.begin(), order.end()));
}

TEST_CASE("epoll: stop() from another thread wakes the loop (the eventfd read)") {
  io_context ctx(epoll_options());
  pair p(ctx);
  std::byte buf[4];
  auto forever = [&]() -> task<void> {
    (void)co_await p.mine.read(buf);
  };
  ctx.spawn(forever());
  std::thread t([&] {
    std::this_thread::sleep_for(30ms);
    ctx.stop();
  });
  const auto t0 = clock_type::now();
  ctx.run();
  t.join();
  CHECK(clock_type::now() - t0 < 5s);
}

TEST_CASE("epoll: files and paths are plain syscalls on the loop thread") {
  io_context ctx(epoll_options());
  char tmpl[] = "/tmp/couring-epoll-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string path = std::string(tmpl) + "/f";
  auto body = [&]() -> task<void> {
    auto f = co_await couring::file::open(ctx, path, {.write = true, .create = true});
    require_ok(f);
    auto w = co_await f->write_at(bytes("hello"), 0);
    require_ok(w);
    require_ok(co_await f->sync());
    auto size = co_await f->size();
    require_ok(size);
    CHECK(*size == 5);
    std::byte back[5];
    auto r = co_await f->read_exactly_at(back, 0);
    require_ok(r);
    CHECK(text(back) == "hello");
    f->close();
    auto missing = co_await couring::file::open(ctx, path + "-nope", {.read = true});
    CHECK(missing.error() == std::errc::no_such_file_or_directory);
  };
  ctx.run(body());
  ::unlink(path.c_str());
  ::rmdir(tmpl);
}

namespace {

// A receive whose buffer comes from a provided buffer ring
// (IOSQE_BUFFER_SELECT): what buffer_pool builds on. A test-only awaitable
// on a raw descriptor of the test's own.
class select_recv : public couring::detail::io_awaitable<select_recv> {
public:
  select_recv(io_context& ctx, int fd, unsigned short bgid)
      : io_awaitable(ctx), fd_(fd), bgid_(bgid) {}
  void prepare(io_uring_sqe* sqe) noexcept {
    io_uring_prep_recv(sqe, fd_, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = bgid_;
  }
  std::pair<int, std::uint32_t> make_result(int res) noexcept { return {res, this->cqe_flags}; }

private:
  int fd_;
  unsigned short bgid_;
};

} // namespace

TEST_CASE("a provided buffer ring gives the same results on both backends") {
  for (auto b : {couring::backend::io_uring, couring::backend::epoll}) {
    INFO("backend " << couring::to_string(b));
    couring::io_context_options o;
    o.backend = b;
    io_context ctx(o);
    constexpr unsigned entries = 4;
    constexpr std::size_t size = 16;
    void* mem = std::aligned_alloc(4096, 4096);
    REQUIRE(mem != nullptr);
    auto* br = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(br);
    static char bufs[2][size];
    // Two buffers, ids 7 and 9.
    io_uring_buf_ring_add(br, bufs[0], size, 7, io_uring_buf_ring_mask(entries), 0);
    io_uring_buf_ring_add(br, bufs[1], size, 9, io_uring_buf_ring_mask(entries), 1);
    io_uring_buf_ring_advance(br, 2);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(br);
    reg.ring_entries = entries;
    reg.bgid = 3;
    REQUIRE(ctx.ring().register_buffer_ring(reg) == 0);
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
    auto body = [&]() -> task<void> {
      CHECK(::write(fds[1], "one", 3) == 3);
      auto [r1, f1] = co_await select_recv(ctx, fds[0], 3);
      CHECK(r1 == 3);
      CHECK((f1 & IORING_CQE_F_BUFFER) != 0);
      CHECK((f1 >> IORING_CQE_BUFFER_SHIFT) == 7);
      CHECK(std::memcmp(bufs[0], "one", 3) == 0);
      // The second waits for data, and then takes the next buffer.
      auto write_later = [&]() -> task<void> {
        (void)co_await couring::sleep_for(ctx, 10ms);
        CHECK(::write(fds[1], "two!", 4) == 4);
      };
      auto recv_second = [&]() -> task<std::pair<int, std::uint32_t>> {
        co_return co_await select_recv(ctx, fds[0], 3);
      };
      auto [second, ignored] = co_await couring::when_all(recv_second(), write_later());
      CHECK(second.first == 4);
      CHECK((second.second >> IORING_CQE_BUFFER_SHIFT) == 9);
      CHECK(std::memcmp(bufs[1], "two!", 4) == 0);
      // The ring is empty now: ENOBUFS.
      CHECK(::write(fds[1], "x", 1) == 1);
      auto [r3, f3] = co_await select_recv(ctx, fds[0], 3);
      CHECK(r3 == -ENOBUFS);
      CHECK((f3 & IORING_CQE_F_BUFFER) == 0);
    };
    ctx.run(body());
    CHECK(ctx.ring().unregister_buffer_ring(3) == 0);
    ::close(fds[0]);
    ::close(fds[1]);
    std::free(mem);
  }
}

TEST_CASE(
    "registrations on the epoll backend: fixed buffers recorded, direct descriptors refused") {
  io_context ctx(epoll_options());
  char data[8];
  iovec iov{.iov_base = data, .iov_len = sizeof data};
  CHECK(ctx.ring().register_buffers(&iov, 1) == 0);
  CHECK(ctx.ring().unregister_buffers() == 0);
  CHECK(ctx.ring().register_files_sparse(16) == -EOPNOTSUPP);
  CHECK(ctx.ring().unregister_buffer_ring(42) == -EINVAL);
}
