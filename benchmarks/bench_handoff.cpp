// Cross-context hand-off: round trips per second between two threads.
//
//   bench_handoff [ROUND_TRIPS]
//
//   switch_to (MSG_RING)   a coroutine bouncing between two runtime contexts
//   switch_to (mailbox)    the same through the eventfd fallback
//   mutex + condvar queue  two threads, a std::queue each, guarded by a mutex,
//                          signalled with a condition variable
//   eventfd                two threads blocking in read(2) on an eventfd each
//
// One round trip is there and back (two hand-offs). Prints one line per
// kind, then the ratios; the thread pairs are not pinned (the machine's
// scheduler decides, as for a server).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>

#include <sys/eventfd.h>
#include <unistd.h>

#include <couring/runtime.hpp>
#include <couring/switch_to.hpp>

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

double bench_switch_to(std::uint64_t n, bool fallback) {
  couring::runtime_options o;
  o.threads = 2;
  o.context.message_fallback = fallback;
  couring::runtime rt(o);
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

// A queue of work items for one thread, as a thread pool would have.
struct locked_queue {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::uint64_t> items;
  void push(std::uint64_t v) {
    {
      std::lock_guard lock(m);
      items.push_back(v);
    }
    cv.notify_one();
  }
  std::uint64_t pop() {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return !items.empty(); });
    const std::uint64_t v = items.front();
    items.pop_front();
    return v;
  }
};

double bench_mutex_queue(std::uint64_t n) {
  locked_queue to_b, to_a;
  std::thread b([&] {
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
  std::thread b([&] {
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
  ::close(to_a);
  ::close(to_b);
  return rate;
}

} // namespace

int main(int argc, char** argv) {
  const std::uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200'000;
  const double msg_ring = bench_switch_to(n, false);
  const double mailbox = bench_switch_to(n, true);
  const double mutex_queue = bench_mutex_queue(n);
  const double efd = bench_eventfd(n);
  std::printf("round trips per second (%llu each)\n", static_cast<unsigned long long>(n));
  std::printf("  switch_to (MSG_RING)   %12.0f\n", msg_ring);
  std::printf("  switch_to (mailbox)    %12.0f\n", mailbox);
  std::printf("  mutex + condvar queue  %12.0f\n", mutex_queue);
  std::printf("  eventfd                %12.0f\n", efd);
  std::printf("switch_to (MSG_RING) / mutex queue: %.2fx\n", msg_ring / mutex_queue);
  std::printf("switch_to (MSG_RING) / eventfd:     %.2fx\n", msg_ring / efd);
  std::printf("switch_to (mailbox) / mutex queue:  %.2fx\n", mailbox / mutex_queue);
  return 0;
}
