// Copies avoided, measured side by side in one run (bytes per second):
//
// 1. One TCP connection over loopback, the client sending `size`-byte
//    buffers with couring: a plain write_all (the kernel copies into the
//    socket), a zero-copy write_all (IORING_OP_SEND_ZC, waits for the
//    notification), and write_fixed from a registered buffer. The receiver is
//    a blocking thread on the other CPU that reads and discards.
// 2. A file in the page cache (/tmp): write_at against write_fixed_at of the
//    same buffer sizes over a 64 MiB range.
//
// 3. Direct descriptors: one-connection ping-pong (64 B and 4 KiB) against
//    a couring echo server on its own thread whose listener accepts into the
//    ring's file table (argument 1) or as plain descriptors (0). The figure
//    is the server thread's CPU time per round trip (counter server_cpu_us).
//
// Mode argument: 0 plain, 1 zero-copy, 2 registered buffer.

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <ctime>
#include <future>
#include <stdexcept>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

namespace {

constexpr std::size_t bytes_per_iteration = 64 << 20;

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
  }
  ~tcp_pair() {
    if (client >= 0)
      ::close(client);
    if (server >= 0)
      ::close(server);
  }
};

void pin(int cpu) {
  if (std::thread::hardware_concurrency() < 2)
    return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  pthread_setaffinity_np(pthread_self(), sizeof one, &one);
}

couring::task<bool> send_loop(couring::tcp_stream& s, couring::registered_buffers& bufs,
                              std::size_t size, int mode) {
  const std::span<const std::byte> buf = bufs.buffer(0).first(size);
  for (std::size_t sent = 0; sent < bytes_per_iteration; sent += size) {
    if (mode == 2) {
      for (std::size_t off = 0; off < size;) {
        auto w = co_await couring::write_fixed(s, bufs, buf.subspan(off));
        if (!w)
          co_return false;
        off += *w;
      }
    } else if (!co_await s.write_all(buf)) {
      co_return false;
    }
  }
  co_return true;
}

void socket_send(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const int mode = static_cast<int>(state.range(1));
  tcp_pair pair;
  std::thread sink([fd = pair.server] {
    pin(0);
    std::vector<std::byte> buf(1 << 20);
    while (::read(fd, buf.data(), buf.size()) > 0) {
    }
  });
  pin(1);
  couring::io_context_options options;
  options.zero_copy_threshold = mode == 1 ? 1 : 0;
  couring::io_context ctx(options);
  couring::registered_buffers bufs(ctx, 1, size);
  std::memset(bufs.buffer(0).data(), 7, size);
  {
    couring::tcp_stream client(ctx, std::exchange(pair.client, -1));
    for (auto _ : state) {
      if (!ctx.run(send_loop(client, bufs, size, mode))) {
        state.SkipWithError("send failed");
        break;
      }
    }
    (void)client.shutdown_write();
  }
  sink.join();
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes_per_iteration));
}

couring::task<bool> file_loop(couring::file& f, couring::registered_buffers& bufs, std::size_t size,
                              bool fixed) {
  const std::span<const std::byte> buf = bufs.buffer(0).first(size);
  for (std::size_t at = 0; at < bytes_per_iteration; at += size) {
    auto w =
        fixed ? co_await couring::write_fixed_at(f, bufs, buf, at) : co_await f.write_at(buf, at);
    if (!w || *w != size)
      co_return false;
  }
  co_return true;
}

void file_write(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const bool fixed = state.range(1) == 2;
  char name[] = "/tmp/couring_bench_XXXXXX";
  const int fd = ::mkstemp(name);
  ::unlink(name);
  couring::io_context ctx;
  couring::file f(ctx, fd);
  couring::registered_buffers bufs(ctx, 1, size);
  std::memset(bufs.buffer(0).data(), 7, size);
  for (auto _ : state) {
    if (!ctx.run(file_loop(f, bufs, size, fixed))) {
      state.SkipWithError("write failed");
      break;
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes_per_iteration));
}

void sizes_and_modes(benchmark::internal::Benchmark* b, std::vector<int> modes) {
  for (int size : {4096, 16384, 65536, 262144, 1 << 20})
    for (int mode : modes)
      b->Args({size, mode});
  b->UseRealTime()->MinTime(0.3);
}

BENCHMARK(socket_send)->Apply([](auto* b) { sizes_and_modes(b, {0, 1, 2}); });
BENCHMARK(file_write)->Apply([](auto* b) { sizes_and_modes(b, {0, 2}); });

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

couring::task<void> echo_one(couring::tcp_listener& l, double& cpu) {
  auto s = co_await l.accept();
  if (!s)
    co_return;
  std::vector<std::byte> buf(16384);
  const double start = thread_cpu_seconds();
  for (;;) {
    auto n = co_await s->read(buf);
    if (!n || *n == 0)
      break;
    if (!co_await s->write_all(std::span(buf).first(*n)))
      break;
  }
  cpu = thread_cpu_seconds() - start;
}

constexpr int round_trips = 256;

void direct_ping_pong(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const bool direct = state.range(1) != 0;
  std::promise<couring::endpoint> bound;
  auto where = bound.get_future();
  double server_cpu = 0;
  std::thread server([&] {
    pin(0);
    couring::io_context sctx;
    couring::listen_options o;
    o.direct_descriptors = direct;
    auto l = couring::tcp_listener::bind(sctx, couring::endpoint::ipv4_loopback(0), o).value();
    bound.set_value(l.local_endpoint());
    sctx.run(echo_one(l, server_cpu));
  });
  pin(1);
  const couring::endpoint ep = where.get();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (::connect(fd, ep.data(), ep.size()) != 0)
    throw std::runtime_error("connect");
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<std::byte> out(size, std::byte{7}), in(size);
  std::int64_t total = 0;
  for (auto _ : state) {
    for (int i = 0; i < round_trips; ++i) {
      if (::send(fd, out.data(), size, 0) != static_cast<ssize_t>(size)) {
        state.SkipWithError("send");
        break;
      }
      for (std::size_t got = 0; got < size;) {
        const ssize_t r = ::recv(fd, in.data() + got, size - got, 0);
        if (r <= 0) {
          state.SkipWithError("recv");
          break;
        }
        got += static_cast<std::size_t>(r);
      }
    }
    total += round_trips;
  }
  ::close(fd);
  server.join();
  state.SetItemsProcessed(total);
  state.counters["server_cpu_us"] = total > 0 ? server_cpu * 1e6 / static_cast<double>(total) : 0;
}

BENCHMARK(direct_ping_pong)
    ->Args({64, 0})
    ->Args({64, 1})
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->UseRealTime()
    ->MinTime(1.0);

} // namespace

BENCHMARK_MAIN();
