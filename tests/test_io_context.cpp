#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include <cerrno>
#include <stop_token>
#include <string>

#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using couring::io_context;
using couring::task;

namespace {

task<int> nops(io_context& ctx, int n) {
  int ok = 0;
  for (int i = 0; i < n; ++i)
    ok += (co_await couring::nop(ctx)).has_value() ? 1 : 0;
  co_return ok;
}

// A stream whose peer never writes: a read on it stays in flight until
// cancelled, which is what a test of stop/teardown needs.
struct idle_pair {
  couring::tcp_stream mine;
  int peer = -1;
  explicit idle_pair(io_context& ctx) {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    mine = couring::tcp_stream(ctx, fds[0]);
    peer = fds[1];
  }
  ~idle_pair() { ::close(peer); }
};

// Whether this kernel sets up a ring with these flags: what the expectations
// below depend on (DEFER_TASKRUN needs 6.1, SINGLE_ISSUER 6.0, SUBMIT_ALL 5.18).
bool kernel_accepts(unsigned flags) {
  io_uring ring{};
  io_uring_params p{};
  p.flags = flags;
  if (io_uring_queue_init_params(4, &ring, &p) != 0)
    return false;
  io_uring_queue_exit(&ring);
  return true;
}

struct never_resumes {
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<>) const noexcept {}
  void await_resume() const noexcept {}
};

} // namespace

TEST_CASE("the ring is set up with the flags this kernel supports") {
  io_context ctx;
  const auto& f = ctx.features();
  CHECK(f.sq_entries >= 256);
  CHECK(f.cq_entries > f.sq_entries); // a CQ larger than the SQ
  if (f.backend == couring::backend::epoll) {
    // The emulated ring has no set-up flags: nothing was asked of the kernel.
    CHECK(f.setup_flags == 0);
    CHECK(f.kernel_features == 0);
    CHECK_FALSE(f.backend_reason.empty());
    return;
  }
  // Each flag is in force exactly when this kernel accepts it; older kernels
  // get fewer, never an error.
  INFO("setup flags: " << f.setup_flags);
  struct wanted {
    const char* name;
    unsigned flags;  // what the probe ring is set up with
    unsigned expect; // the flag that must then be in force
  };
  const wanted all[] = {
      {"IORING_SETUP_SINGLE_ISSUER", IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_SINGLE_ISSUER},
      {"IORING_SETUP_DEFER_TASKRUN", IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
       IORING_SETUP_DEFER_TASKRUN},
      {"IORING_SETUP_SUBMIT_ALL", IORING_SETUP_SUBMIT_ALL, IORING_SETUP_SUBMIT_ALL},
  };
  for (const auto& w : all) {
    INFO(w.name);
    if (kernel_accepts(w.flags)) {
      CHECK((f.setup_flags & w.expect) != 0);
    } else {
      test_support::declare_skip(std::string("this kernel refuses ") + w.name +
                                 ": only its absence is checked");
      CHECK((f.setup_flags & w.expect) == 0);
    }
  }
}

TEST_CASE("the ring fd is registered where the kernel allows it") {
  io_context ctx;
  // The epoll backend has no ring fd to register.
  CHECK(ctx.features().ring_fd_registered ==
        (ctx.features().backend == couring::backend::io_uring));
  io_context plain({.register_ring_fd = false});
  CHECK_FALSE(plain.features().ring_fd_registered);
  // The ring without a registered fd carries real operations, through its
  // own io_uring_enter calls: NOPs, and a timer.
  const auto enters_before = plain.enter_count();
  CHECK(plain.run(nops(plain, 100)) == 100);
  auto sleeper = [&]() -> task<bool> {
    co_return (co_await couring::sleep_for(plain, std::chrono::milliseconds(1))).has_value();
  };
  CHECK(plain.run(sleeper()));
  CHECK(plain.enter_count() > enters_before);
  CHECK(plain.pending_operations() == 0);
}

TEST_CASE("set-up flags fall back one by one on older kernels") {
  using couring::detail::setup_with_fallback;
  const unsigned all = IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
                       IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_COOP_TASKRUN |
                       IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
  // A 5.19 kernel: knows TASKRUN_FLAG, COOP_TASKRUN, SUBMIT_ALL and CQSIZE,
  // not the 6.x flags.
  std::vector<unsigned> tried;
  const unsigned known_519 = IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_COOP_TASKRUN |
                             IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
  auto kernel_519 = [&](unsigned flags) {
    tried.push_back(flags);
    return (flags & ~known_519) != 0 ? -EINVAL : 0;
  };
  unsigned accepted = 0;
  CHECK(setup_with_fallback(kernel_519, accepted) == 0);
  CHECK(accepted == known_519);
  REQUIRE(tried.size() == 3);
  CHECK(tried[0] == all);
  CHECK(tried[1] == (all & ~IORING_SETUP_DEFER_TASKRUN));

  // A kernel that refuses everything ends with EINVAL after trying no flags at all.
  tried.clear();
  auto refuses = [&](unsigned flags) {
    tried.push_back(flags);
    return -EINVAL;
  };
  CHECK(setup_with_fallback(refuses, accepted) == -EINVAL);
  CHECK(tried.back() == 0u);

  // Other errors are final: no retry with fewer flags.
  tried.clear();
  auto forbidden = [&](unsigned flags) {
    tried.push_back(flags);
    return -EPERM;
  };
  CHECK(setup_with_fallback(forbidden, accepted) == -EPERM);
  CHECK(tried.size() == 1);
}

TEST_CASE("operations complete through the ring") {
  io_context ctx;
  CHECK(ctx.run(nops(ctx, 1000)) == 1000);
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("a full submission queue neither loses nor crashes an operation") {
  // 8 SQ slots, 2,000 operations prepared in one loop turn.
  io_context ctx({.sq_entries = 8});
  std::atomic<int> done{0};
  auto one = [&](io_context& c) -> task<void> {
    auto r = co_await couring::nop(c);
    if (r)
      ++done;
  };
  for (int i = 0; i < 2000; ++i)
    ctx.spawn(one(ctx));
  ctx.run();
  CHECK(done == 2000);
}

TEST_CASE("many ready operations share one io_uring_enter") {
  io_context ctx;
  constexpr int tasks = 64, rounds = 100;
  for (int i = 0; i < tasks; ++i) {
    auto body = [](io_context& c) -> task<void> {
      (void)co_await nops(c, rounds);
    };
    ctx.spawn(body(ctx));
  }
  const auto before = ctx.enter_count();
  ctx.run();
  const auto enters = ctx.enter_count() - before;
  INFO("io_uring_enter calls for " << tasks * rounds << " operations: " << enters);
  // One enter per loop turn: about `rounds` turns, far from one per operation.
  CHECK(enters <= 3 * rounds);
}

TEST_CASE("spawned tasks all run, and run() returns when none is left") {
  io_context ctx;
  int finished = 0;
  auto body = [&](io_context& c, int n) -> task<void> {
    (void)co_await nops(c, n);
    ++finished;
  };
  for (int i = 0; i < 50; ++i)
    ctx.spawn(body(ctx, i % 7));
  ctx.run();
  CHECK(finished == 50);
  ctx.run(); // nothing left: returns at once
}

TEST_CASE("an exception escaping a spawned task is rethrown by run()") {
  io_context ctx;
  auto bad = [](io_context& c) -> task<void> {
    (void)co_await couring::nop(c);
    throw std::runtime_error("spawned failure");
  };
  ctx.spawn(bad(ctx));
  CHECK_THROWS_WITH(ctx.run(), "spawned failure");
}

TEST_CASE("a spawned exception during run(task) cancels the root and is rethrown") {
  io_context ctx;
  idle_pair pair(ctx);
  auto bad = [](io_context& c) -> task<void> {
    (void)co_await couring::nop(c);
    throw std::runtime_error("spawned failure");
  };
  std::error_code root_saw;
  auto root = [&]() -> task<void> {
    std::byte b[1];
    auto r = co_await pair.mine.read(b); // would wait forever
    root_saw = r.error();
  };
  ctx.spawn(bad(ctx));
  CHECK_THROWS_WITH(ctx.run(root()), "spawned failure");
  CHECK(root_saw == std::errc::operation_canceled);
}

TEST_CASE("stop() from a task ends run() with work still pending") {
  io_context ctx;
  idle_pair pair(ctx);
  bool read_returned = false;
  auto reader = [&]() -> task<void> {
    std::byte b[1];
    (void)co_await pair.mine.read(b);
    read_returned = true;
  };
  auto stopper = [&]() -> task<void> {
    (void)co_await couring::nop(ctx);
    ctx.stop();
  };
  ctx.spawn(reader());
  ctx.spawn(stopper());
  ctx.run();
  CHECK_FALSE(read_returned);
  CHECK(ctx.pending_operations() == 1);
  // The context's destructor cancels the read and destroys the reader's frame.
}

TEST_CASE("stop() from another thread wakes a blocked run()") {
  io_context ctx;
  idle_pair pair(ctx);
  auto reader = [&]() -> task<void> {
    std::byte b[1];
    (void)co_await pair.mine.read(b);
  };
  ctx.spawn(reader());
  test_support::joining_thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ctx.stop();
  });
  const auto t0 = std::chrono::steady_clock::now();
  ctx.run();
  stopper.join();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
}

TEST_CASE("a task suspended with nothing in flight is reported, not hung") {
  io_context ctx;
  auto stuck = []() -> task<void> {
    co_await never_resumes{};
  };
  CHECK_THROWS_AS(ctx.run(stuck()), std::logic_error);
}

TEST_CASE("run from another thread or from inside run is refused") {
  io_context ctx;
  bool refused = false;
  std::thread other([&] {
    try {
      ctx.run();
    } catch (const std::logic_error&) {
      refused = true;
    }
  });
  other.join();
  CHECK(refused);
  auto reentrant = [&]() -> task<void> {
    ctx.run();
    co_return;
  };
  CHECK_THROWS_AS(ctx.run(reentrant()), std::logic_error);
}

TEST_CASE("destroying the context cancels pending operations and frees spawned frames") {
  struct frame_probe {
    int* alive;
    explicit frame_probe(int* a) : alive(a) { ++*alive; }
    ~frame_probe() { --*alive; }
  };
  int alive = 0;
  int peers[64];
  {
    io_context ctx;
    for (int i = 0; i < 64; ++i) {
      int fds[2];
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
      peers[i] = fds[1];
      auto reader = [](io_context& c, int fd, int* a) -> task<void> {
        frame_probe probe(a);
        couring::tcp_stream s(c, fd);
        std::byte b[16];
        (void)co_await s.read(b);
      };
      ctx.spawn(reader(ctx, fds[0], &alive));
    }
    auto stopper = [&]() -> task<void> {
      (void)co_await couring::nop(ctx);
      ctx.stop();
    };
    ctx.spawn(stopper());
    ctx.run();
    CHECK(alive == 64);
    CHECK(ctx.pending_operations() == 64);
  }
  CHECK(alive == 0);
  for (int fd : peers) {
    // Each reader's socket was closed when its frame was destroyed.
    char c;
    CHECK(::recv(fd, &c, 1, MSG_DONTWAIT) == 0);
    ::close(fd);
  }
}

TEST_CASE("stop() during run(task) cancels the root, and run returns its result") {
  io_context ctx;
  idle_pair pair(ctx);
  auto stopper = [&]() -> task<void> {
    (void)co_await couring::nop(ctx);
    ctx.stop();
  };
  auto root = [&]() -> task<std::error_code> {
    std::byte b[1];
    auto r = co_await pair.mine.read(b); // would wait forever
    co_return r ? std::error_code{} : r.error();
  };
  ctx.spawn(stopper());
  CHECK(ctx.run(root()) == std::errc::operation_canceled);
  CHECK(ctx.pending_operations() == 0);
  // The stop was used up: the next run goes on normally.
  CHECK(ctx.run(nops(ctx, 3)) == 3);
}

TEST_CASE("after a spawned task fails, the other spawned tasks go on at the next run()") {
  io_context ctx;
  int survivor_steps = 0;
  bool survivor_done = false;
  auto bad = [](io_context& c) -> task<void> {
    (void)co_await couring::nop(c);
    throw std::runtime_error("spawned failure");
  };
  auto survivor = [&]() -> task<void> {
    for (int i = 0; i < 20; ++i) {
      (void)co_await couring::nop(ctx);
      ++survivor_steps;
    }
    survivor_done = true;
  };
  ctx.spawn(survivor());
  ctx.spawn(bad(ctx));
  CHECK_THROWS_WITH(ctx.run(), "spawned failure");
  CHECK_FALSE(survivor_done); // run() stopped at the end of the failing turn
  const int steps_then = survivor_steps;
  CHECK(steps_then < 20);
  ctx.run();
  CHECK(survivor_done);
  CHECK(survivor_steps == 20);
}

// io_context.hpp: "An exception escaping it is rethrown by run (the first one;
// later ones are dropped only if one is already waiting to be rethrown)".
TEST_CASE("two spawned failures: the first is rethrown, a later one is kept for the next run") {
  io_context ctx;
  auto fail_after = [](io_context& c, int turns, const char* what) -> task<void> {
    for (int i = 0; i < turns; ++i)
      (void)co_await couring::nop(c);
    throw std::runtime_error(what);
  };
  // In different loop turns: the second is not waiting behind the first when
  // it fails, so it is kept, and the next run() rethrows it.
  ctx.spawn(fail_after(ctx, 1, "first"));
  ctx.spawn(fail_after(ctx, 5, "second"));
  CHECK_THROWS_WITH(ctx.run(), "first");
  CHECK_THROWS_WITH(ctx.run(), "second");
  ctx.run(); // nothing left, nothing to rethrow

  // In the same loop turn, while the first is waiting to be rethrown: the
  // second is dropped, as documented.
  ctx.spawn(fail_after(ctx, 1, "first"));
  ctx.spawn(fail_after(ctx, 1, "dropped"));
  CHECK_THROWS_WITH(ctx.run(), "first");
  CHECK_NOTHROW(ctx.run());
}

TEST_CASE("misuse: helpers that need a running context throw logic_error outside run()") {
  io_context ctx;
  auto some_task = [&]() -> task<int> {
    co_return 1;
  };
  std::stop_source source;
  // The task forms take the context whose run() is executing on this thread.
  CHECK_THROWS_AS((void)couring::with_timeout(some_task(), std::chrono::seconds(1)),
                  std::logic_error);
  CHECK_THROWS_AS((void)couring::with_stop_token(some_task(), source.get_token()),
                  std::logic_error);
  CHECK_THROWS_AS(io_context::running("a test"), std::logic_error);
  CHECK(io_context::current() == nullptr);
  // Inside run() the same calls find the context.
  auto inside = [&]() -> task<int> {
    auto r = co_await couring::with_timeout(some_task(), std::chrono::seconds(1));
    co_return r.value();
  };
  CHECK(ctx.run(inside()) == 1);
}

TEST_CASE("misuse: when_any of an empty vector and spawn of an empty task throw invalid_argument") {
  io_context ctx;
  CHECK_THROWS_AS(ctx.run(couring::when_any(std::vector<task<int>>{})), std::invalid_argument);
  CHECK_THROWS_AS(ctx.spawn(task<void>{}), std::invalid_argument);
  CHECK(ctx.pending_operations() == 0);
  ctx.run(); // nothing was spawned
}
