// Cross-context hand-off: round trips per second between two threads.
//
//   bench_handoff [ROUND_TRIPS [RUNS]]     (defaults: 200,000 and 3)
//
//   switch_to (MSG_RING)      a coroutine bouncing between two runtime
//                             contexts, with the runtime's default idle spin
//                             (io_context_options::idle_spin, 50 us)
//   switch_to (MSG_RING, no spin)  the same with idle_spin = 0: every hop
//                             wakes the other thread
//   switch_to (mailbox)       the eventfd fallback, default spin
//   mutex + condvar queue     two threads, a std::deque each, guarded by a
//                             mutex, signalled with a condition variable (a
//                             thread pool's queue as commonly written)
//   mutex queue + spin        the same, but pop() first polls the queue for
//                             up to the same 50 us before it waits on the
//                             condition variable: what the spin alone buys
//   eventfd                   two threads blocking in read(2) on an eventfd each
//
// One round trip is there and back (two hand-offs). The kinds run RUNS times,
// interleaved (all kinds once, then again), so that they share the machine's
// load; every run is printed, then the medians and their ratios. The thread
// pairs are not pinned (the scheduler decides, as for a server) unless
// BENCH_PIN is set (both the runtime and the plain threads then run on the
// first two allowed CPUs). BENCH_HANDOFF_STATS prints the contexts' spin
// counters to stderr.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <couring/runtime.hpp>
#include <couring/switch_to.hpp>

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

bool pinned() {
  return std::getenv("BENCH_PIN") != nullptr;
}

// Pins the calling thread to the index-th CPU it may run on (BENCH_PIN only),
// as runtime_options::pin_threads does for the contexts.
void pin_self(int index) {
  if (!pinned())
    return;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
    return;
  int seen = 0;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &allowed) && seen++ == index) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(c, &one);
      pthread_setaffinity_np(pthread_self(), sizeof one, &one);
      return;
    }
  }
}

void unpin_self() {
  if (!pinned())
    return;
  cpu_set_t all;
  CPU_ZERO(&all);
  for (int c = 0; c < CPU_SETSIZE; ++c)
    CPU_SET(c, &all);
  pthread_setaffinity_np(pthread_self(), sizeof all, &all);
}

double bench_switch_to(std::uint64_t n, bool fallback, std::chrono::microseconds spin) {
  couring::runtime_options o;
  o.threads = 2;
  o.context.message_fallback = fallback;
  o.context.idle_spin = spin;
  o.pin_threads = pinned();
  couring::runtime rt(o);
  struct stats_guard {
    couring::runtime& rt;
    ~stats_guard() {
      if (std::getenv("BENCH_HANDOFF_STATS") == nullptr)
        return;
      for (std::size_t i = 0; i < 2; ++i)
        std::fprintf(stderr, "  ctx %zu: spins %llu hits %llu enters %llu\n", i,
                     (unsigned long long)rt.context(i).spin_count(),
                     (unsigned long long)rt.context(i).spin_hits(),
                     (unsigned long long)rt.context(i).enter_count());
    }
  } stats{rt};
  return rt.run([&]() -> couring::task<double> {
    couring::io_context& a = rt.context(0);
    couring::io_context& b = rt.context(1);
    for (int i = 0; i < 1000; ++i) { // warm-up
      co_await couring::switch_to(b);
      co_await couring::switch_to(a);
    }
    const auto start = clock_type::now();
    for (std::uint64_t i = 0; i < n; ++i) {
      co_await couring::switch_to(b);
      co_await couring::switch_to(a);
    }
    co_return n / seconds_since(start);
  }());
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// A queue of work items for one thread, as a thread pool would have. With
// spin, pop() first polls for up to that long (the bound couring's runtime
// uses) before it waits on the condition variable.
struct locked_queue {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::uint64_t> items;
  std::atomic<std::size_t> size{0};
  std::chrono::microseconds spin{0};
  void push(std::uint64_t v) {
    {
      std::lock_guard lock(m);
      items.push_back(v);
      size.store(items.size(), std::memory_order_release);
    }
    cv.notify_one();
  }
  std::uint64_t pop() {
    if (spin.count() > 0 && size.load(std::memory_order_acquire) == 0) {
      const auto deadline = clock_type::now() + spin;
      do {
        for (int i = 0; i < 8; ++i)
          cpu_relax();
      } while (size.load(std::memory_order_acquire) == 0 && clock_type::now() < deadline);
    }
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return !items.empty(); });
    const std::uint64_t v = items.front();
    items.pop_front();
    size.store(items.size(), std::memory_order_release);
    return v;
  }
};

double bench_mutex_queue(std::uint64_t n, std::chrono::microseconds spin) {
  locked_queue to_b, to_a;
  to_b.spin = to_a.spin = spin;
  pin_self(0);
  std::thread b([&] {
    pin_self(1);
    for (;;) {
      const std::uint64_t v = to_b.pop();
      to_a.push(v);
      if (v == 0)
        return;
    }
  });
  for (int i = 0; i < 1000; ++i) {
    to_b.push(1);
    to_a.pop();
  }
  const auto start = clock_type::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    to_b.push(i + 1);
    to_a.pop();
  }
  const double rate = n / seconds_since(start);
  to_b.push(0);
  to_a.pop();
  b.join();
  unpin_self();
  return rate;
}

double bench_eventfd(std::uint64_t n) {
  const int to_b = eventfd(0, EFD_CLOEXEC), to_a = eventfd(0, EFD_CLOEXEC);
  auto signal = [](int fd) {
    std::uint64_t one = 1;
    if (::write(fd, &one, sizeof one) != sizeof one)
      std::abort();
  };
  auto wait = [](int fd) {
    std::uint64_t v;
    if (::read(fd, &v, sizeof v) != sizeof v)
      std::abort();
  };
  const std::uint64_t total = n + 1000;
  pin_self(0);
  std::thread b([&] {
    pin_self(1);
    for (std::uint64_t i = 0; i < total; ++i) {
      wait(to_b);
      signal(to_a);
    }
  });
  for (int i = 0; i < 1000; ++i) {
    signal(to_b);
    wait(to_a);
  }
  const auto start = clock_type::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    signal(to_b);
    wait(to_a);
  }
  const double rate = n / seconds_since(start);
  b.join();
  unpin_self();
  ::close(to_a);
  ::close(to_b);
  return rate;
}

} // namespace

int main(int argc, char** argv) {
  const std::uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200'000;
  const int runs = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  using us = std::chrono::microseconds;
  const us spin = couring::runtime_default_idle_spin;
  struct kind {
    const char* name;
    std::function<double()> run;
    std::vector<double> rates;
  };
  std::vector<kind> kinds = {
      {"switch_to (MSG_RING)",
       [&] { return bench_switch_to(n, false, couring::automatic_idle_spin); },
       {}},
      {"switch_to (MSG_RING, no spin)", [&] { return bench_switch_to(n, false, us(0)); }, {}},
      {"switch_to (mailbox)",
       [&] { return bench_switch_to(n, true, couring::automatic_idle_spin); },
       {}},
      {"mutex + condvar queue", [&] { return bench_mutex_queue(n, us(0)); }, {}},
      {"mutex queue + 50 us spin", [&] { return bench_mutex_queue(n, spin); }, {}},
      {"eventfd", [&] { return bench_eventfd(n); }, {}},
  };
  for (int r = 0; r < runs; ++r)
    for (auto& k : kinds)
      k.rates.push_back(k.run());
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("round trips per second (%llu each, %d runs interleaved%s)\n",
              static_cast<unsigned long long>(n), runs, pinned() ? ", pinned" : "");
  for (auto& k : kinds) {
    std::printf("  %-30s", k.name);
    for (double r : k.rates)
      std::printf(" %10.0f", r);
    std::printf("   median %10.0f\n", median(k.rates));
  }
  const double msg_ring = median(kinds[0].rates), no_spin = median(kinds[1].rates),
               mailbox = median(kinds[2].rates), mutex_queue = median(kinds[3].rates),
               mutex_spin = median(kinds[4].rates), efd = median(kinds[5].rates);
  std::printf("switch_to (MSG_RING) / mutex queue:          %.2fx\n", msg_ring / mutex_queue);
  std::printf("switch_to (MSG_RING) / mutex queue + spin:   %.2fx\n", msg_ring / mutex_spin);
  std::printf("switch_to (MSG_RING) / same without spin:    %.2fx\n", msg_ring / no_spin);
  std::printf("switch_to (MSG_RING) / eventfd:              %.2fx\n", msg_ring / efd);
  std::printf("switch_to (mailbox) / mutex queue:           %.2fx\n", mailbox / mutex_queue);
  // The hand-off without the spin's help: what it costs when the CPUs are
  // too busy for a spin to pay (the spin then backs off to this).
  std::printf("switch_to (MSG_RING, no spin) / mutex queue: %.2fx\n", no_spin / mutex_queue);
  return 0;
}
