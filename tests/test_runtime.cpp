// runtime (runtime.hpp) and cross-context scheduling (switch_to.hpp).
//
// Catch2's macros are not thread-safe: code on the runtime's threads never
// uses them. It throws instead (check() below), which reaches runtime::run
// like any exception escaping a task, and the test thread asserts.

#include "support.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <couring/runtime.hpp>
#include <couring/sleep.hpp>
#include <couring/switch_to.hpp>

// Counts every allocation of the process (switch_to must make none).
namespace {
std::atomic<std::uint64_t> allocations{0};
}
void* operator new(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n))
    return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
// Every other form too, so that no allocation of the sanitizers' own is
// freed by ours (ASan's alloc-dealloc-mismatch).
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
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}

using namespace couring;
using namespace std::chrono_literals;
using test_support::open_fd_count;

namespace {

void check(bool ok, const char* what) {
  if (!ok)
    throw std::runtime_error(std::string("check failed: ") + what);
}

template <class R>
void check_ok(const R& r, const char* what) {
  if (!r)
    throw std::runtime_error(std::string(what) + ": " + r.error().message());
}

std::uint64_t env_count(const char* name, std::uint64_t fallback) {
  const char* s = std::getenv(name);
  return s != nullptr ? std::strtoull(s, nullptr, 10) : fallback;
}

runtime_options with_threads(unsigned n, bool fallback = false) {
  runtime_options o;
  o.threads = n;
  o.context.message_fallback = fallback;
  return o;
}

task<std::vector<std::thread::id>> visit_all(runtime& rt) {
  std::vector<std::thread::id> ids;
  for (std::size_t i = 0; i < rt.size(); ++i) {
    co_await switch_to(rt.context(i));
    check(io_context::current() == &rt.context(i), "current() is the target");
    ids.push_back(std::this_thread::get_id());
  }
  co_return ids;
}

} // namespace

TEST_CASE("runtime runs the task on context 0 and switch_to reaches every context's thread") {
  runtime rt(with_threads(4));
  REQUIRE(rt.size() == 4);
  const auto ids = rt.run(visit_all(rt));
  REQUIRE(ids.size() == 4);
  std::set<std::thread::id> distinct(ids.begin(), ids.end());
  CHECK(distinct.size() == 4);
  CHECK(distinct.count(std::this_thread::get_id()) == 0);
  if (rt.context(0).features().backend == couring::backend::io_uring) {
    // Every ring shares context 0's kernel worker pool.
    for (std::size_t i = 1; i < rt.size(); ++i)
      CHECK(rt.context(i).features().wq_attached);
    // And is single-issuer with deferred task work: MSG_RING must wake it.
    CHECK((rt.context(1).features().setup_flags & IORING_SETUP_DEFER_TASKRUN) != 0);
  } else {
    // epoll: no kernel worker pool to share; messages take the mailbox.
    for (std::size_t i = 0; i < rt.size(); ++i)
      CHECK(!rt.context(i).features().wq_attached);
  }
  // A second run works the same way.
  CHECK(rt.run(visit_all(rt)).size() == 4);
}

TEST_CASE("runtime defaults to the CPUs the process may use") {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
  runtime rt(runtime_options{.pin_threads = true});
  CHECK(rt.size() == static_cast<std::size_t>(CPU_COUNT(&set)));
  CHECK(rt.run([]() -> task<int> {
    co_return 7;
  }()) == 7);
}

namespace {
// A coroutine bouncing between a and b `rounds` times (two switches each).
task<std::uint64_t> ping_pong(io_context& a, io_context& b, std::uint64_t rounds) {
  std::uint64_t hops = 0;
  for (std::uint64_t i = 0; i < rounds; ++i) {
    co_await switch_to(b);
    if (io_context::current() != &b)
      throw std::runtime_error("not on b");
    ++hops;
    co_await switch_to(a);
    if (io_context::current() != &a)
      throw std::runtime_error("not on a");
    ++hops;
  }
  co_return hops;
}

// Pings while a plain thread (no context) posts `posts` functions to both
// contexts; every one must run, on the right thread.
void ping_pong_with_poster(bool fallback, std::uint64_t rounds, std::uint64_t posts) {
  runtime rt(with_threads(3, fallback));
  std::atomic<std::uint64_t> ran_on_1{0}, ran_on_2{0}, wrong_thread{0};
  std::atomic<bool> poster_done{false};
  auto main_task = [&]() -> task<std::uint64_t> {
    io_context& a = rt.context(1);
    io_context& b = rt.context(2);
    co_await switch_to(a);
    test_support::joining_thread poster([&] {
      for (std::uint64_t i = 0; i < posts; ++i) {
        const bool ok1 =
            post(a, [&] { (io_context::current() == &a ? ran_on_1 : wrong_thread).fetch_add(1); });
        const bool ok2 =
            post(b, [&] { (io_context::current() == &b ? ran_on_2 : wrong_thread).fetch_add(1); });
        if (!ok1 || !ok2)
          wrong_thread.fetch_add(1000000);
      }
      poster_done = true;
    });
    const std::uint64_t hops = co_await ping_pong(a, b, rounds);
    // The posts still in the mailboxes run soon: wait for them (bounded).
    for (int i = 0; i < 20000 && (!poster_done || ran_on_1 + ran_on_2 < 2 * posts); ++i)
      co_await sleep_for(a, 1ms);
    co_return hops;
  };
  const auto start = std::chrono::steady_clock::now();
  const std::uint64_t hops = rt.run(main_task());
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(hops == 2 * rounds);
  CHECK(ran_on_1 == posts);
  CHECK(ran_on_2 == posts);
  CHECK(wrong_thread == 0);
  WARN((fallback ? "mailbox" : "MSG_RING")
       << " ping-pong: " << rounds << " round trips in "
       << std::chrono::duration<double>(elapsed).count() << " s");
}
} // namespace

TEST_CASE("switch_to ping-pong over MSG_RING: exact count while a plain thread posts") {
  // 1,000,000 round trips by default; the ThreadSanitizer build sets fewer.
  ping_pong_with_poster(false, env_count("COURING_PINGPONG_ROUNDS", 1'000'000),
                        env_count("COURING_PINGPONG_POSTS", 100'000));
}

TEST_CASE("switch_to ping-pong through the mailbox fallback (eventfd)") {
  ping_pong_with_poster(true, env_count("COURING_PINGPONG_ROUNDS", 1'000'000) / 10,
                        env_count("COURING_PINGPONG_POSTS", 100'000) / 10);
}

TEST_CASE("switch_to allocates nothing") {
  runtime rt(with_threads(2));
  std::uint64_t during = 1;
  rt.run([&]() -> task<void> {
    co_await ping_pong(rt.context(0), rt.context(1), 1000);  // warm up both loops
    auto t = ping_pong(rt.context(0), rt.context(1), 10000); // its frame is allocated here
    const std::uint64_t before = allocations.load();
    auto hops = co_await std::move(t);
    check(hops == 20000, "hops");
    during = allocations.load() - before;
  }());
  CHECK(during == 0);
}

namespace {
constexpr std::size_t per_connection = 4096 + 17;
constexpr std::size_t total_connections = 2000;

std::size_t index_of(const runtime& rt) {
  for (std::size_t i = 0; i < rt.size(); ++i)
    if (io_context::current() == &rt.context(i))
      return i;
  throw std::runtime_error("not on one of the runtime's contexts");
}

// Echoes until the peer half-closes, then counts the context that served it.
struct echo_handler {
  runtime* rt;
  std::vector<std::atomic<std::size_t>>* served;
  task<void> operator()(tcp_stream s) const {
    std::byte buf[1024];
    for (;;) {
      auto n = co_await s.read(buf);
      if (!n || *n == 0)
        break;
      auto w = co_await s.write_all(std::span(buf, *n));
      if (!w)
        break;
    }
    (*served)[index_of(*rt)].fetch_add(1);
  }
};

// `count` clients on ctx, `parallel` at a time, each sending a distinct
// pattern and checking every byte that comes back.
task<void> run_clients(io_context& ctx, endpoint to, std::size_t count, std::size_t parallel) {
  std::size_t next = 0; // one thread: no atomics needed
  auto one_client = [&]() -> task<void> {
    while (next < count) {
      const std::size_t id = next++;
      auto c = co_await tcp_stream::connect(ctx, to);
      check_ok(c, "connect");
      const auto data = test_support::pattern(id, per_connection);
      std::vector<std::byte> back(per_connection);
      auto w = co_await c->write_all(data);
      check_ok(w, "write_all");
      check_ok(c->shutdown_write(), "shutdown_write");
      auto r = co_await c->read_exactly(back);
      check_ok(r, "read_exactly");
      check(back == data, "echoed bytes");
      std::byte extra[1];
      auto eof = co_await c->read(extra);
      check(eof && *eof == 0, "end of stream after the echo");
    }
  };
  std::vector<task<void>> workers;
  for (std::size_t i = 0; i < parallel; ++i)
    workers.push_back(one_client());
  co_await when_all(std::move(workers));
}

task<void> wait_until(io_context& ctx, const std::function<bool()>& done, const char* what) {
  for (int i = 0; !done(); ++i) {
    check(i < 30000, what); // 30 s
    co_await sleep_for(ctx, 1ms);
  }
}

std::size_t sum(const std::vector<std::atomic<std::size_t>>& v) {
  std::size_t n = 0;
  for (auto& x : v)
    n += x.load();
  return n;
}
} // namespace

TEST_CASE("4 contexts serve 2,000 connections spread by SO_REUSEPORT") {
  test_support::raise_fd_limit();
  runtime rt(with_threads(4));
  std::vector<std::atomic<std::size_t>> served(rt.size());
  std::vector<tcp_listener> listeners(rt.size());
  std::atomic<std::size_t> bound{0}, stopped{0};
  endpoint ep = endpoint::ipv4_loopback(0);
  const echo_handler handler{&rt, &served};
  // One listener per context, on the same port, each accepting on its own
  // context until it is closed (from that context).
  auto serve = [&](std::size_t i) -> task<void> {
    auto l = tcp_listener::bind(rt.context(i), ep, listen_options{.reuse_port = true});
    check_ok(l, "bind with SO_REUSEPORT");
    listeners[i] = std::move(*l);
    bound.fetch_add(1);
    for (;;) {
      auto s = co_await listeners[i].accept();
      if (!s)
        break;
      io_context::current()->spawn(handler(std::move(*s)));
    }
    stopped.fetch_add(1);
  };
  rt.run([&]() -> task<void> {
    // Context 0 first: it picks the port the others share.
    auto l0 = tcp_listener::bind(rt.context(0), ep, listen_options{.reuse_port = true});
    check_ok(l0, "bind");
    ep = l0->local_endpoint();
    l0->close();
    for (std::size_t i = 0; i < rt.size(); ++i)
      spawn_on(rt.context(i), serve(i));
    co_await wait_until(
        rt.context(0), [&] { return bound == rt.size(); }, "all bound");
    co_await run_clients(rt.context(0), ep, total_connections, 64);
    co_await wait_until(
        rt.context(0), [&] { return sum(served) == total_connections; }, "all served");
    for (std::size_t i = 0; i < rt.size(); ++i)
      post(rt.context(i), [&, i] { listeners[i].close(); });
    co_await wait_until(
        rt.context(0), [&] { return stopped == rt.size(); }, "all stopped");
  }());
  CHECK(sum(served) == total_connections);
  for (std::size_t i = 0; i < rt.size(); ++i) {
    INFO("context " << i << " served " << served[i].load());
    CHECK(served[i] > 0);
  }
}

TEST_CASE("4 contexts serve 2,000 connections handed round-robin by one acceptor") {
  test_support::raise_fd_limit();
  runtime rt(with_threads(4));
  std::vector<std::atomic<std::size_t>> served(rt.size());
  std::atomic<bool> acceptor_done{false};
  rt.run([&]() -> task<void> {
    auto l = tcp_listener::bind(rt.context(0), endpoint::ipv4_loopback(0));
    check_ok(l, "bind");
    auto acceptor = [&]() -> task<void> {
      auto r = co_await serve_round_robin(rt, *l, echo_handler{&rt, &served});
      check_ok(r, "serve_round_robin");
      acceptor_done = true;
    };
    rt.context(0).spawn(acceptor());
    co_await run_clients(rt.context(0), l->local_endpoint(), total_connections, 64);
    co_await wait_until(
        rt.context(0), [&] { return sum(served) == total_connections; }, "all served");
    l->close();
    co_await wait_until(
        rt.context(0), [&] { return acceptor_done.load(); }, "acceptor ends");
  }());
  CHECK(sum(served) == total_connections);
  for (std::size_t i = 0; i < rt.size(); ++i) {
    INFO("context " << i << " served " << served[i].load());
    // Round-robin: exactly a quarter each.
    CHECK(served[i] == total_connections / rt.size());
  }
}

namespace {
// Busy until cancelled or stopped: timers and nops back to back.
task<void> busy(io_context& ctx, std::atomic<std::uint64_t>& turns) {
  for (;;) {
    auto r = co_await sleep_for(ctx, 100us);
    if (!r)
      co_return;
    turns.fetch_add(1);
  }
}
} // namespace

TEST_CASE("stop() from another thread while every context is busy") {
  runtime rt(with_threads(4));
  std::vector<std::atomic<std::uint64_t>> turns(rt.size());
  std::atomic<bool> main_cancelled{false};
  test_support::joining_thread stopper([&] {
    // Waits until every context has been busy for a while, then stops.
    for (int i = 0; i < 20000; ++i) {
      bool all = true;
      for (auto& t : turns)
        all = all && t.load() > 10;
      if (all)
        break;
      std::this_thread::sleep_for(1ms);
    }
    rt.stop();
  });
  const auto start = std::chrono::steady_clock::now();
  rt.run([&]() -> task<void> {
    for (std::size_t i = 0; i < rt.size(); ++i)
      spawn_on(rt.context(i), busy(rt.context(i), turns[i]));
    auto r = co_await sleep_for(rt.context(0), 1h);
    main_cancelled = !r && r.error() == std::errc::operation_canceled;
  }());
  CHECK(std::chrono::steady_clock::now() - start < 30s);
  CHECK(main_cancelled);
  for (auto& t : turns)
    CHECK(t > 10);
  stopper.join();
  // The tasks stay suspended until the next run: they go on from where they were.
  const std::uint64_t before = turns[3].load();
  rt.run([&]() -> task<void> {
    co_await wait_until(
        rt.context(0), [&] { return turns[3].load() > before + 10; }, "context 3 goes on");
  }());
}

TEST_CASE("an exception escaping a task on another context reaches run") {
  runtime rt(with_threads(3));
  std::atomic<bool> main_cancelled{false};
  auto thrower = []() -> task<void> {
    co_await nop(*io_context::current());
    throw std::runtime_error("boom on context 2");
  };
  REQUIRE_THROWS_WITH(rt.run([&]() -> task<void> {
    spawn_on(rt.context(2), thrower());
    auto r = co_await sleep_for(rt.context(0), 1h);
    main_cancelled = !r && r.error() == std::errc::operation_canceled;
  }()),
                      "boom on context 2");
  CHECK(main_cancelled); // the task was cancelled, as on one context
  // The runtime is usable afterwards.
  CHECK(rt.run([]() -> task<int> {
    co_return 3;
  }()) == 3);
}

TEST_CASE("an exception in run's task after it switched comes back to run") {
  runtime rt(with_threads(2));
  REQUIRE_THROWS_WITH(rt.run([&]() -> task<int> {
    co_await switch_to(rt.context(1));
    throw std::runtime_error("thrown on context 1");
    co_return 1;
  }()),
                      "thrown on context 1");
}

TEST_CASE("destroying the runtime with operations in flight on every context") {
  const std::size_t fds_before = open_fd_count();
  {
    runtime rt(with_threads(4));
    std::atomic<std::size_t> parked{0};
    rt.run([&]() -> task<void> {
      // Named: the frames refer to the lambda's captures.
      auto parker = [&]() -> task<void> {
        io_context& ctx = *io_context::current();
        // A connection with a read in flight, and a long timer.
        auto l = tcp_listener::bind(ctx, endpoint::ipv4_loopback(0));
        check_ok(l, "bind");
        auto c = co_await tcp_stream::connect(ctx, l->local_endpoint());
        check_ok(c, "connect");
        auto s = co_await l->accept();
        check_ok(s, "accept");
        std::byte buf[64];
        parked.fetch_add(1);
        ctx.spawn([](io_context& c) -> task<void> {
          auto slept = co_await sleep_for(c, 1h);
          (void)slept;
          throw std::runtime_error("never resumed");
        }(ctx));
        auto got = co_await s->read(buf);
        (void)got;
        throw std::runtime_error("never resumed");
      };
      for (std::size_t i = 0; i < rt.size(); ++i)
        spawn_on(rt.context(i), parker());
      co_await wait_until(
          rt.context(0), [&] { return parked == rt.size(); }, "all parked");
    }());
    for (std::size_t i = 0; i < rt.size(); ++i)
      CHECK(rt.context(i).pending_operations() > 0);
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("messages to a context that is not running, and to one that is shut down") {
  auto token = std::make_shared<int>(0);
  std::atomic<int> ran{0};
  {
    runtime rt(with_threads(2));
    // Between runs: accepted, and run by the next run.
    REQUIRE(post(rt.context(1), [&ran, token] { ran.fetch_add(1); }));
    CHECK(token.use_count() == 2);
    rt.run([&]() -> task<void> {
      co_await wait_until(
          rt.context(0), [&] { return ran.load() == 1; }, "delivered");
    }());
    CHECK(token.use_count() == 1);
    // Accepted after the last run: abandoned at destruction -- destroyed
    // without running, never leaked.
    REQUIRE(post(rt.context(1), [&ran, token] { ran.fetch_add(100); }));
    REQUIRE(spawn_on(rt.context(0), [](std::shared_ptr<int>, std::atomic<int>& r) -> task<void> {
      r.fetch_add(1000);
      co_return;
    }(token, ran)));
    CHECK(token.use_count() == 3);
  }
  CHECK(ran == 1);
  CHECK(token.use_count() == 1);

  // A context that is shut down refuses: post and spawn_on return false,
  // switch_to throws.
  io_context ctx;
  ctx.close_mailbox();
  CHECK_FALSE(post(ctx, [&ran] { ran = -1; }));
  io_context other;
  REQUIRE_THROWS_AS(other.run([&]() -> task<void> {
    co_await switch_to(ctx);
  }()),
                    std::logic_error);
  CHECK(ran == 1);
}

TEST_CASE("a message posted while the target's loop stops still runs or is refused, never lost") {
  // Many rounds of: a plain thread posts in a loop while the runtime stops;
  // every post that was accepted runs in that run or the next one.
  runtime rt(with_threads(2));
  std::atomic<std::uint64_t> accepted{0}, ran{0};
  for (int round = 0; round < 20; ++round) {
    std::atomic<bool> go{true};
    test_support::joining_thread poster([&] {
      // Bounded: the context may not be running to take them.
      for (int i = 0; go && i < 5000; ++i) {
        if (post(rt.context(1), [&ran] { ran.fetch_add(1); }))
          accepted.fetch_add(1);
        if (i % 64 == 0)
          std::this_thread::sleep_for(10us);
      }
    });
    rt.run([&]() -> task<void> {
      co_await sleep_for(rt.context(0), 2ms);
    }());
    go = false;
    poster.join();
  }
  rt.run([&]() -> task<void> {
    co_await wait_until(
        rt.context(0), [&] { return ran.load() == accepted.load(); }, "every accepted post ran");
  }());
  CHECK(ran == accepted);
  CHECK(accepted > 0);
}

#ifndef NDEBUG
TEST_CASE("using an object from another context's thread is a logic_error in debug builds") {
  runtime rt(with_threads(2));
  const bool threw = rt.run([&]() -> task<bool> {
    auto l = tcp_listener::bind(rt.context(0), endpoint::ipv4_loopback(0));
    check_ok(l, "bind");
    co_await switch_to(rt.context(1));
    bool logic_error = false;
    try {
      auto s = co_await l->accept(); // l belongs to context 0
      (void)s;
    } catch (const std::logic_error&) {
      logic_error = true;
    }
    co_await switch_to(rt.context(0)); // l is closed where it belongs
    co_return logic_error;
  }());
  CHECK(threw);
}
#endif

TEST_CASE("a stream can be released and adopted by another context") {
  runtime rt(with_threads(2));
  const std::string got = rt.run([&]() -> task<std::string> {
    io_context& a = rt.context(0);
    auto l = tcp_listener::bind(a, endpoint::ipv4_loopback(0));
    check_ok(l, "bind");
    auto c = co_await tcp_stream::connect(a, l->local_endpoint());
    check_ok(c, "connect");
    auto s = co_await l->accept();
    check_ok(s, "accept");
    unique_fd fd = s->release();
    check(fd.get() >= 0 && !s->is_open(), "released");
    auto r0 = co_await s->read(std::span<std::byte>());
    check(!r0 && r0.error() == std::errc::operation_canceled, "a released stream is as if closed");
    co_await switch_to(rt.context(1));
    tcp_stream adopted(rt.context(1), fd.release());
    auto w = co_await adopted.write_all(test_support::bytes("hello"));
    check_ok(w, "write on the adopting context");
    co_await switch_to(a);
    std::byte buf[5];
    auto r = co_await c->read_exactly(buf);
    check_ok(r, "read");
    co_await switch_to(rt.context(1));
    adopted.close(); // closed where it belongs
    co_await switch_to(a);
    co_return test_support::text(buf);
  }());
  CHECK(got == "hello");
}

// --- the idle spin (io_context_options::idle_spin) --------------------------

namespace {

runtime_options with_spin(unsigned threads, std::chrono::microseconds spin, bool fallback = false) {
  runtime_options o = with_threads(threads, fallback);
  o.context.idle_spin = spin;
  return o;
}

std::chrono::nanoseconds thread_cpu_time() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// Busy for a pseudo-random 0..max_us microseconds: the answer lands anywhere
// around the end of the other side's spin.
void busy_for_random(std::uint64_t& seed, unsigned max_us) {
  seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::microseconds((seed >> 33) % (max_us + 1));
  while (std::chrono::steady_clock::now() < until) {
  }
}

// Ping-pong whose answers come after a random delay (see busy_for_random).
task<std::uint64_t> jittery_ping_pong(io_context& a, io_context& b, std::uint64_t rounds,
                                      unsigned max_us) {
  std::uint64_t hops = 0, seed = 42;
  for (std::uint64_t i = 0; i < rounds; ++i) {
    co_await switch_to(b);
    check(io_context::current() == &b, "on b");
    busy_for_random(seed, max_us);
    ++hops;
    co_await switch_to(a);
    check(io_context::current() == &a, "on a");
    busy_for_random(seed, max_us);
    ++hops;
  }
  co_return hops;
}

} // namespace

TEST_CASE("idle_spin: validated; no spin for a lone context, the runtime's default in a runtime") {
  io_context_options o;
  o.idle_spin = std::chrono::microseconds(-5);
  CHECK_THROWS_AS(io_context(o), std::invalid_argument);
  o.idle_spin = max_idle_spin + std::chrono::microseconds(1);
  CHECK_THROWS_AS(io_context(o), std::invalid_argument);
  runtime_options bad = with_spin(2, std::chrono::microseconds(-2));
  CHECK_THROWS_AS(runtime(bad), std::invalid_argument);

  o.idle_spin = max_idle_spin;
  CHECK(io_context(o).idle_spin() == max_idle_spin);
  o.idle_spin = std::chrono::microseconds(0);
  CHECK(io_context(o).idle_spin().count() == 0);
  io_context lone; // automatic: a context of its own does not spin
  CHECK(lone.idle_spin().count() == 0);
  CHECK(lone.run([&]() -> task<int> {
    for (int i = 0; i < 3; ++i)
      (void)co_await sleep_for(lone, 1ms);
    co_return 1;
  }()) == 1);
  CHECK(lone.spin_count() == 0);

  runtime rt(with_threads(2));
  CHECK(rt.context(0).idle_spin() == runtime_default_idle_spin);
  CHECK(rt.context(1).idle_spin() == runtime_default_idle_spin);
  runtime off(with_spin(2, std::chrono::microseconds(0)));
  CHECK(off.context(1).idle_spin().count() == 0);
  if (rt.context(0).features().backend == couring::backend::io_uring) {
    // The flag the spin polls for pending task work (MSG_RING into a
    // DEFER_TASKRUN ring) is there on this kernel.
    CHECK((rt.context(0).features().setup_flags & IORING_SETUP_TASKRUN_FLAG) != 0);
  }
}

TEST_CASE("idle_spin: ping-pong is exact with the spin off, on, and at its bound") {
  const std::uint64_t rounds = env_count("COURING_PINGPONG_ROUNDS", 1'000'000) / 20;
  for (const bool fallback : {false, true}) {
    for (const auto spin : {std::chrono::microseconds(0), runtime_default_idle_spin,
                            std::chrono::microseconds(max_idle_spin)}) {
      runtime rt(with_spin(2, spin, fallback));
      const std::uint64_t hops = rt.run(ping_pong(rt.context(0), rt.context(1), rounds));
      CHECK(hops == 2 * rounds);
      const std::uint64_t spins = rt.context(0).spin_count() + rt.context(1).spin_count();
      const std::uint64_t hits = rt.context(0).spin_hits() + rt.context(1).spin_hits();
      CHECK(hits <= spins);
      if (spin.count() == 0)
        CHECK(spins == 0);
      if (spin == max_idle_spin)
        CHECK(spins > 0); // every wake-up within 10 ms earns credit
      WARN((fallback ? "mailbox" : "MSG_RING")
           << ", idle_spin " << spin.count() << " us: " << spins << " spins, " << hits << " hits");
    }
  }
}

TEST_CASE("idle_spin: no wake-up is lost when a message arrives as the spin ends") {
  // Answers come 0..40 us late against a 20 us spin, while a plain thread
  // posts into both mailboxes: arrivals fall before, during and just after
  // the spin's end. A lost wake-up would leave a loop asleep: the watchdog
  // then stops the runtime, and the count comes out short.
  // (Both stretched under the sanitizers: COURING_TEST_TIME_SCALE.) A batch
  // in which no spin happened at all (every wake-up too slow to earn credit,
  // on a loaded machine) is run again, up to 5 times.
  const std::uint64_t rounds = env_count("COURING_PINGPONG_ROUNDS", 1'000'000) / 100;
  const std::uint64_t posts = env_count("COURING_PINGPONG_POSTS", 100'000) / 10;
  const auto spin = std::chrono::microseconds(static_cast<long>(20 * test_support::time_scale()));
  const auto jitter = static_cast<unsigned>(2 * spin.count());
  std::uint64_t spun_msg_ring = 0, spun_mailbox = 0;
  for (int batch = 0; batch < 10; ++batch) {
    const bool fallback = batch % 2 == 1;
    runtime rt(with_spin(2, spin, fallback));
    std::atomic<bool> done{false}, timed_out{false};
    std::atomic<std::uint64_t> ran{0};
    test_support::joining_thread watchdog([&] {
      for (int i = 0; i < 120'000 && !done; ++i)
        std::this_thread::sleep_for(1ms);
      if (!done) {
        timed_out = true;
        rt.stop();
      }
    });
    io_context& a = rt.context(0);
    io_context& b = rt.context(1);
    test_support::joining_thread poster([&] {
      for (std::uint64_t i = 0; i < posts && !done; ++i) {
        (void)post(i % 2 ? a : b, [&] { ran.fetch_add(1); });
        if (i % 64 == 0)
          std::this_thread::sleep_for(std::chrono::microseconds(i % 50));
      }
    });
    const std::uint64_t hops = rt.run([&]() -> task<std::uint64_t> {
      const std::uint64_t h = co_await jittery_ping_pong(a, b, rounds, jitter);
      poster.join();
      for (int i = 0; i < 20000 && ran < posts; ++i)
        co_await sleep_for(a, 1ms);
      co_return h;
    }());
    done = true;
    watchdog.join();
    CHECK_FALSE(timed_out);
    CHECK(hops == 2 * rounds);
    CHECK(ran == posts);
    const std::uint64_t spins = a.spin_count() + b.spin_count();
    const std::uint64_t hits = a.spin_hits() + b.spin_hits();
    WARN((fallback ? "mailbox" : "MSG_RING")
         << ": " << spins << " spins, " << hits << " hits, " << spins - hits << " ended empty");
    (fallback ? spun_mailbox : spun_msg_ring) += spins;
    if (batch >= 1 && spun_msg_ring > 0 && spun_mailbox > 0)
      break;
  }
  CHECK(spun_msg_ring > 0);
  CHECK(spun_mailbox > 0);
}

TEST_CASE("idle_spin: stop() while a context spins") {
  // Context 1 posts to context 0 every millisecond: context 0, asleep in
  // run's task, keeps its credit and spins (up to 10 ms at a time) between
  // the messages. stop() from another thread, while it spins, ends run.
  runtime rt(with_spin(2, max_idle_spin));
  std::atomic<bool> seen_spinning{false};
  std::atomic<std::uint64_t> delivered{0};
  std::chrono::steady_clock::time_point stopped_at;
  test_support::joining_thread stopper([&] {
    for (int i = 0; i < 20'000 && !seen_spinning; ++i) {
      if (delivered > 20 && rt.context(0).spinning())
        seen_spinning = true;
      else
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    stopped_at = std::chrono::steady_clock::now();
    rt.stop();
  });
  bool cancelled = false;
  rt.run([&]() -> task<void> {
    io_context& a = rt.context(0);
    io_context& b = rt.context(1);
    auto poster = [](io_context& from, io_context& to,
                     std::atomic<std::uint64_t>& count) -> task<void> {
      for (;;) {
        if (!post(to, [&count] { count.fetch_add(1); }))
          co_return;
        if (!co_await sleep_for(from, 1ms))
          co_return;
      }
    };
    spawn_on(b, poster(b, a, delivered));
    auto r = co_await sleep_for(a, 1h);
    cancelled = !r && r.error() == std::errc::operation_canceled;
  }());
  const auto returned_at = std::chrono::steady_clock::now();
  stopper.join();
  const auto latency = returned_at - stopped_at;
  CHECK(cancelled);
  CHECK(seen_spinning);
  CHECK(latency < 5s);
  const double stop_us = std::chrono::duration<double, std::micro>(latency).count();
  WARN("stop while spinning took " << stop_us << " us; " << rt.context(0).spin_count()
                                   << " spins on context 0");
}

TEST_CASE("idle_spin: a context whose messages stopped stops spinning and blocks") {
  // The bound at its maximum (10 ms) and a timer every millisecond: a spin
  // that did not give up would catch every tick and burn the whole 300 ms.
  runtime rt(with_spin(2, max_idle_spin));
  struct measure {
    std::uint64_t spins = 0;
    std::chrono::nanoseconds cpu{};
    std::chrono::nanoseconds wall{};
  };
  const measure m = rt.run([&]() -> task<measure> {
    io_context& a = rt.context(0);
    io_context& b = rt.context(1);
    (void)co_await ping_pong(a, b, 2000); // messages: credit to spin
    co_await switch_to(b);
    const std::uint64_t spins_before = b.spin_count();
    const auto cpu_before = thread_cpu_time();
    const auto wall_before = std::chrono::steady_clock::now();
    for (int i = 0; i < 300; ++i)
      (void)co_await sleep_for(b, 1ms);
    measure out;
    out.cpu = thread_cpu_time() - cpu_before;
    out.wall = std::chrono::steady_clock::now() - wall_before;
    out.spins = b.spin_count() - spins_before;
    co_await switch_to(a);
    co_return out;
  }());
  // At most the credit's worth of spins (4), each at most 10 ms (a tick
  // ends it sooner); the rest of the time the thread sleeps in the kernel.
  CHECK(m.spins <= 4);
  CHECK(m.cpu < 100ms);
  CHECK(m.wall >= 300ms);
  const double cpu_ms = std::chrono::duration<double, std::milli>(m.cpu).count();
  const double wall_ms = std::chrono::duration<double, std::milli>(m.wall).count();
  WARN("300 ticks: " << m.spins << " spins, thread CPU " << cpu_ms << " ms of " << wall_ms
                     << " ms");
}

// --- the batched sleep (io_context_options::wait_batch) ----------------------

namespace {

io_context_options batched(unsigned n, std::chrono::microseconds window) {
  io_context_options o;
  o.wait_batch = n;
  o.wait_batch_timeout = window;
  return o;
}

// The kernel has min_wait_usec (6.12+): the test's lower bounds hold only there.
bool kernel_batches(const io_context& ctx) {
  return ctx.features().backend == couring::backend::io_uring &&
         (ctx.features().kernel_features & (1u << 15)) != 0; // IORING_FEAT_MIN_TIMEOUT
}

task<void> read_until_closed(unix_stream& s, std::atomic<int>& ended) {
  std::byte b[16];
  auto r = co_await s.read(b);
  check(!r && r.error() == std::errc::operation_canceled, "an idle read ends when closed");
  ended.fetch_add(1);
}

// n reads that never complete, each on a socket pair of its own, until
// close_all(): the in-flight operations a batched sleep waits among.
struct idle_reads {
  std::vector<std::pair<unix_stream, unix_stream>> pairs;
  std::atomic<int> ended{0};
  idle_reads(io_context& ctx, int n) {
    pairs.reserve(static_cast<std::size_t>(n)); // the readers hold references into it
    for (int i = 0; i < n; ++i) {
      auto p = couring::socketpair(ctx);
      check_ok(p, "socketpair");
      pairs.push_back(std::move(*p));
      ctx.spawn(read_until_closed(pairs.back().first, ended));
    }
  }
  void close_all() {
    for (auto& p : pairs)
      p.first.close();
  }
};

struct latency_among_idle {
  std::chrono::microseconds took{};
  std::uint64_t enters = 0;
  std::string got;
};

// On ctx (its thread): `idle` reads that never complete are in flight while a
// byte that is already in a socket is read; how long that read took.
task<latency_among_idle> read_among_idle(io_context& ctx, int idle) {
  auto active = couring::socketpair(ctx);
  check_ok(active, "socketpair");
  idle_reads idlers(ctx, idle);
  co_await sleep_for(ctx, 1ms); // the idle reads are in flight
  auto w = co_await active->second.write(test_support::bytes("x"));
  check_ok(w, "write");
  latency_among_idle out;
  std::byte b[4];
  const std::uint64_t enters = ctx.enter_count();
  const auto start = std::chrono::steady_clock::now();
  auto r = co_await active->first.read(b);
  out.took = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::steady_clock::now() - start);
  out.enters = ctx.enter_count() - enters;
  check_ok(r, "read");
  out.got = test_support::text(std::span(b, *r));
  active->first.close();
  idlers.close_all();
  for (int i = 0; idlers.ended.load() != idle; ++i) {
    check(i < 5000, "the idle reads end");
    co_await sleep_for(ctx, 1ms);
  }
  co_return out;
}

} // namespace

TEST_CASE("wait_batch: validated; in force only where the kernel has min_wait") {
  CHECK_THROWS_AS(io_context(batched(0, 20us)), std::invalid_argument);
  CHECK_THROWS_AS(io_context(batched(max_wait_batch + 1, 20us)), std::invalid_argument);
  CHECK_THROWS_AS(io_context(batched(8, 0us)), std::invalid_argument);
  CHECK_THROWS_AS(io_context(batched(8, max_wait_batch_timeout + 1us)), std::invalid_argument);
  runtime_options bad = with_threads(2);
  bad.context.wait_batch = 0;
  CHECK_THROWS_AS(runtime(bad), std::invalid_argument);

  io_context plain;
  CHECK(plain.features().batched_wait == false); // 1 by default: off
  io_context on(batched(max_wait_batch, max_wait_batch_timeout));
  CHECK(on.features().batched_wait == kernel_batches(on));
  if (on.features().backend == couring::backend::epoll)
    CHECK(on.features().batched_wait == false); // falls back to waking at the first
  runtime_options o = with_threads(2);
  o.context.wait_batch = 8;
  runtime rt(o);
  for (std::size_t i = 0; i < rt.size(); ++i)
    CHECK(rt.context(i).features().batched_wait == kernel_batches(rt.context(i)));
}

TEST_CASE("wait_batch: a sleeping loop takes what came once the batch timeout passed") {
  // 8 reads in flight that never complete, and one whose byte is there: the
  // loop asks for 8 completions and gets 1. Where the kernel batches, the
  // read completes after the window (hrtimers never fire early) and long
  // before the kernel-side overall timeout (60 s); elsewhere at once.
  constexpr auto window = 10ms;
  io_context ctx(batched(16, window));
  const latency_among_idle r = ctx.run(read_among_idle(ctx, 8));
  CHECK(r.got == "x");
  CHECK(r.took < 1s);
  if (kernel_batches(ctx)) {
    CHECK(r.took >= window);
    CHECK(r.enters <= 2); // one sleep, not one per poll
  }
  WARN("batched read among 8 idle: " << r.took.count() << " us, " << r.enters << " enters");

  // Without batching the same read is not held back.
  io_context plain;
  const latency_among_idle p = plain.run(read_among_idle(plain, 8));
  CHECK(p.got == "x");
  CHECK(p.took < window);
}

TEST_CASE("wait_batch: with fewer than two operations in flight the loop wakes at the first") {
  // Asking for more than can complete would hold every lone read for the
  // whole window.
  constexpr auto window = 10ms;
  io_context ctx(batched(16, window));
  const latency_among_idle r = ctx.run(read_among_idle(ctx, 0));
  CHECK(r.got == "x");
  CHECK(r.took < window);
}

TEST_CASE("wait_batch: idle operations do not wake the loop every window") {
  // The kernel ends a min_wait with nothing in only when there is no overall
  // timeout; ring::enter_batched gives one, so a loop whose requests sit
  // idle (connections that say nothing) sleeps until something comes.
  io_context ctx(batched(16, 1us));
  idle_reads idlers(ctx, 8);
  const std::uint64_t enters = ctx.run([&]() -> task<std::uint64_t> {
    co_await sleep_for(ctx, 1ms);
    const std::uint64_t before = ctx.enter_count();
    co_await sleep_for(ctx, 100ms); // 100,000 windows
    const std::uint64_t n = ctx.enter_count() - before;
    idlers.close_all();
    co_return n;
  }());
  ctx.run();
  CHECK(idlers.ended.load() == 8);
  CHECK(enters < 10);
}

TEST_CASE("wait_batch: the runtime's loops batch, and stop() ends a batched sleep") {
  constexpr auto window = 10ms;
  runtime_options o = with_threads(2);
  o.context.wait_batch = 16;
  o.context.wait_batch_timeout = window;
  runtime rt(o);
  // On context 1, whose loop sleeps through wait_idle (the runtime's spin is
  // on, but earns no credit without messages).
  const latency_among_idle r = rt.run([&]() -> task<latency_among_idle> {
    co_await switch_to(rt.context(1));
    latency_among_idle x = co_await read_among_idle(rt.context(1), 8);
    co_await switch_to(rt.context(0));
    co_return x;
  }());
  CHECK(r.got == "x");
  CHECK(r.took < 1s);
  if (kernel_batches(rt.context(1)))
    CHECK(r.took >= window);

  // stop() from another thread while context 0 sleeps with idle reads in
  // flight: run returns (within a window of the wake-up), nothing is lost.
  io_context ctx(batched(16, window));
  idle_reads idlers(ctx, 8);
  const auto start = std::chrono::steady_clock::now();
  std::thread stopper([&] {
    std::this_thread::sleep_for(20ms);
    ctx.stop();
  });
  ctx.run();
  stopper.join();
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  idlers.close_all();
  ctx.run();
  CHECK(idlers.ended.load() == 8);
}
