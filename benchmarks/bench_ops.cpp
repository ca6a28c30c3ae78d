// Micro-benchmarks, each a side-by-side pair measured in the same run:
//
// 1. Operation overhead: `co_await nop(ctx)` against a hand-written liburing
//    loop doing the same NOPs on a ring set up the same way, with 1 and with
//    32 operations in flight, and against the least a coroutine API can do
//    (floor_nop: a coroutine per flow, no record, no checks; see
//    nop_references.hpp). Reported per operation (items/s).
// 2. One connection ping-pong over loopback TCP, 64 B and 4 KiB messages,
//    like for like: in both pairs the echo server runs on a thread of its own
//    pinned to one CPU and the client on the benchmark thread pinned to
//    another (when there are two CPUs), so both pay the same cross-thread
//    wake-ups. Blocking read/write on each side against couring on each side
//    (an io_context per thread). Reported per round trip.
//
// The ratios are printed by benchmarks/run.sh from the JSON output.

#include <benchmark/benchmark.h>

#include <cstring>
#include <future>
#include <stdexcept>
#include <thread>
#include <vector>

#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "nop_references.hpp"

namespace {

constexpr int ops_per_task = 1024;

// --- 1. NOP overhead ----------------------------------------------------------

couring::task<void> nop_loop(couring::io_context& ctx, int n) {
  for (int i = 0; i < n; ++i)
    (void)co_await couring::nop(ctx);
}

void couring_nop(benchmark::State& state) {
  const int in_flight = static_cast<int>(state.range(0));
  couring::io_context ctx;
  for (auto _ : state) {
    if (in_flight == 1) {
      ctx.run(nop_loop(ctx, ops_per_task));
    } else {
      for (int i = 0; i < in_flight; ++i)
        ctx.spawn(nop_loop(ctx, ops_per_task));
      ctx.run();
    }
  }
  state.SetItemsProcessed(state.iterations() * in_flight * ops_per_task);
}

// The references (nop_references.hpp): the raw liburing loop, and the
// least any coroutine API can do (no record, no result type, no checks).
void reference_nop(benchmark::State& state, long (*loop)(nop_references::ring&, int, long)) {
  const int in_flight = static_cast<int>(state.range(0));
  nop_references::ring r;
  const long total = static_cast<long>(in_flight) * ops_per_task;
  for (auto _ : state)
    benchmark::DoNotOptimize(loop(r, in_flight, total));
  state.SetItemsProcessed(state.iterations() * total);
}
void raw_nop(benchmark::State& state) {
  reference_nop(state, nop_references::raw_nop_loop);
}
void floor_nop(benchmark::State& state) {
  reference_nop(state, nop_references::floor_nop_loop);
}

BENCHMARK(raw_nop)->Arg(1)->Arg(32)->UseRealTime();
BENCHMARK(floor_nop)->Arg(1)->Arg(32)->UseRealTime();
BENCHMARK(couring_nop)->Arg(1)->Arg(32)->UseRealTime();

// --- 2. One connection ping-pong -----------------------------------------------

constexpr int round_trips_per_iteration = 256;

// A connected loopback TCP pair made with plain syscalls.
struct tcp_pair {
  int client = -1, server = -1;
  tcp_pair() {
    int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l, 1) != 0 ||
        ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("listen");
    client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      throw std::runtime_error("connect");
    server = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(l);
    int one = 1;
    ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~tcp_pair() {
    if (client >= 0)
      ::close(client);
    if (server >= 0)
      ::close(server);
  }
};

// Pins the calling thread to one CPU for the life of the object, then
// restores its affinity: the server thread to CPU 0, the client (the
// benchmark thread) to CPU 1, the same for both pairs. With one CPU nothing
// is pinned.
class pinned {
public:
  explicit pinned(int cpu) {
    if (std::thread::hardware_concurrency() < 2)
      return;
    if (pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) != 0)
      return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    active_ = pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
  }
  ~pinned() {
    if (active_)
      pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  pinned(const pinned&) = delete;
  pinned& operator=(const pinned&) = delete;

private:
  cpu_set_t saved_{};
  bool active_ = false;
};

constexpr int server_cpu = 0;
constexpr int client_cpu = 1;

bool write_full(int fd, const std::byte* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0)
      return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_full(int fd, std::byte* p, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0)
      return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

void blocking_ping_pong(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  tcp_pair pair;
  pinned client_pin(client_cpu);
  std::thread echo([fd = pair.server] {
    pinned server_pin(server_cpu);
    std::vector<std::byte> buf(16384);
    for (;;) {
      ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n <= 0 || !write_full(fd, buf.data(), static_cast<std::size_t>(n)))
        return;
    }
  });
  std::vector<std::byte> out(size, std::byte{7}), in(size);
  for (auto _ : state) {
    for (int i = 0; i < round_trips_per_iteration; ++i) {
      if (!write_full(pair.client, out.data(), size) || !read_full(pair.client, in.data(), size)) {
        state.SkipWithError("blocking ping-pong failed");
        break;
      }
    }
  }
  ::shutdown(pair.client, SHUT_WR);
  echo.join();
  state.SetItemsProcessed(state.iterations() * round_trips_per_iteration);
}

couring::task<void> couring_echo(couring::tcp_stream& s) {
  std::vector<std::byte> buf(16384);
  for (;;) {
    auto n = co_await s.read(buf);
    if (!n || *n == 0)
      co_return;
    if (!co_await s.write_all(std::span(buf).first(*n)))
      co_return;
  }
}

couring::task<bool> couring_client(couring::tcp_stream& s, std::span<const std::byte> out,
                                   std::span<std::byte> in) {
  for (int i = 0; i < round_trips_per_iteration; ++i) {
    auto w = co_await s.write_all(out);
    auto r = co_await s.read_exactly(in);
    if (!w || !r)
      co_return false;
  }
  co_return true;
}

void couring_ping_pong(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  tcp_pair pair;
  pinned client_pin(client_cpu);
  // The server: its own thread and its own io_context (a context belongs to
  // the thread that creates it), echoing until the client half-closes.
  std::thread server_thread([fd = std::exchange(pair.server, -1)] {
    pinned server_pin(server_cpu);
    couring::io_context sctx;
    couring::tcp_stream server(sctx, fd);
    sctx.run(couring_echo(server));
  });
  couring::io_context ctx;
  couring::tcp_stream client(ctx, std::exchange(pair.client, -1));
  std::vector<std::byte> out(size, std::byte{7}), in(size);
  for (auto _ : state) {
    if (!ctx.run(couring_client(client, out, in))) {
      state.SkipWithError("couring ping-pong failed");
      break;
    }
  }
  (void)client.shutdown_write(); // the echo task sees end of stream and finishes
  server_thread.join();
  state.SetItemsProcessed(state.iterations() * round_trips_per_iteration);
}

BENCHMARK(blocking_ping_pong)->Arg(64)->Arg(4096)->UseRealTime();
BENCHMARK(couring_ping_pong)->Arg(64)->Arg(4096)->UseRealTime();

// --- 3. Datagram ping-pong ---------------------------------------------------------
// One UDP datagram to an echo and back, 64 B and 1 KiB: a blocking
// recvfrom/sendto echo thread and client against couring's udp_socket on
// both sides (the echo on its own thread and context). Pinned as above.
// Datagrams per second are the items per second (two per round trip).

couring::endpoint loopback_of(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return couring::endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len).value();
}

int bound_udp_socket() {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  const auto any = couring::endpoint::ipv4_loopback(0);
  if (fd < 0 || ::bind(fd, any.data(), any.size()) != 0)
    throw std::runtime_error("udp bind");
  return fd;
}

void blocking_udp_ping_pong(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const int server = bound_udp_socket(), client = bound_udp_socket();
  const auto server_ep = loopback_of(server);
  pinned client_pin(client_cpu);
  std::thread echo([server] {
    pinned server_pin(server_cpu);
    std::byte buf[2048];
    for (;;) {
      sockaddr_storage from{};
      socklen_t len = sizeof from;
      const ssize_t n =
          ::recvfrom(server, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n <= 0) // an empty datagram ends it
        return;
      ::sendto(server, buf, static_cast<std::size_t>(n), 0, reinterpret_cast<sockaddr*>(&from),
               len);
    }
  });
  std::vector<std::byte> out(size, std::byte{7}), in(size);
  for (auto _ : state) {
    for (int i = 0; i < round_trips_per_iteration; ++i) {
      if (::sendto(client, out.data(), size, 0, server_ep.data(), server_ep.size()) !=
              static_cast<ssize_t>(size) ||
          ::recv(client, in.data(), size, 0) != static_cast<ssize_t>(size)) {
        state.SkipWithError("blocking datagram ping-pong failed");
        break;
      }
    }
  }
  ::sendto(client, out.data(), 0, 0, server_ep.data(), server_ep.size());
  echo.join();
  ::close(server);
  ::close(client);
  state.SetItemsProcessed(state.iterations() * round_trips_per_iteration * 2);
}

couring::task<void> couring_udp_echo(couring::udp_socket& s) {
  std::byte buf[2048];
  for (;;) {
    auto d = co_await s.receive_from(buf);
    if (!d || d->size == 0)
      co_return;
    (void)co_await s.send_to(std::span(buf, d->size), d->sender);
  }
}

couring::task<bool> couring_udp_client(couring::udp_socket& s, const couring::endpoint& to,
                                       std::span<const std::byte> out, std::span<std::byte> in) {
  for (int i = 0; i < round_trips_per_iteration; ++i) {
    auto w = co_await s.send_to(out, to);
    auto r = co_await s.receive_from(in);
    if (!w || !r || r->size != in.size())
      co_return false;
  }
  co_return true;
}

void couring_udp_ping_pong(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  pinned client_pin(client_cpu);
  std::promise<couring::endpoint> bound;
  auto server_ep_future = bound.get_future();
  std::thread server_thread([&bound] {
    pinned server_pin(server_cpu);
    couring::io_context sctx;
    auto server = couring::udp_socket::bind(sctx, couring::endpoint::ipv4_loopback(0)).value();
    bound.set_value(server.local_endpoint().value());
    sctx.run(couring_udp_echo(server));
  });
  const couring::endpoint server_ep = server_ep_future.get();
  couring::io_context ctx;
  auto client = couring::udp_socket::bind(ctx, couring::endpoint::ipv4_loopback(0)).value();
  std::vector<std::byte> out(size, std::byte{7}), in(size);
  for (auto _ : state) {
    if (!ctx.run(couring_udp_client(client, server_ep, out, in))) {
      state.SkipWithError("couring datagram ping-pong failed");
      break;
    }
  }
  auto end = [&]() -> couring::task<void> { // an empty datagram ends the echo
    (void)co_await client.send_to(std::span<const std::byte>(), server_ep);
  };
  ctx.run(end());
  server_thread.join();
  state.SetItemsProcessed(state.iterations() * round_trips_per_iteration * 2);
}

BENCHMARK(blocking_udp_ping_pong)->Arg(64)->Arg(1024)->UseRealTime();
BENCHMARK(couring_udp_ping_pong)->Arg(64)->Arg(1024)->UseRealTime();

} // namespace

BENCHMARK_MAIN();
