// Buffer pool modes side by side (README, "Buffer pools"): incremental
// consumption (IOU_PBUF_RING_INC), bundled receives (IORING_RECVSEND_BUNDLE),
// both, neither. Everything runs in one process on one io_context over
// 127.0.0.1, so the CPU figures include the sending side: compare ratios
// between the modes of one run, not absolute numbers.
//
//   pool_modes [--repeat N] [--quick]
//
//  - held:  1,000 connections each send one 64 B message; the server holds
//           every lease. Buffer memory pinned (4 KiB buffers).
//  - bulk:  one connection, 64 KiB writes, 4 KiB buffers, leases released
//           at once: process CPU per MiB, completions per MiB.
//  - echo:  one connection, ping-pong of SIZE bytes (64 B, 4 KiB) through
//           receive(pool) + write_all: process CPU per round trip.
// The modes run interleaved (A, B, C, D, A, B, ...), N times each.

#include <couring/couring.hpp>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <sys/resource.h>

using couring::buffer_lease;
using couring::buffer_pool;
using couring::buffer_pool_options;
using couring::io_context;
using couring::task;
using couring::tcp_listener;
using couring::tcp_stream;

namespace {

struct mode {
  const char* name;
  buffer_pool_options options;
};
const mode modes[] = {
    {"inc+bundle", {.incremental = true, .bundle = true}},
    {"inc", {.incremental = true, .bundle = false}},
    {"bundle", {.incremental = false, .bundle = true}},
    {"plain", {.incremental = false, .bundle = false}},
};

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

struct pair_t {
  tcp_stream client;
  tcp_stream server;
};

task<pair_t> connect_pair(tcp_listener& l, io_context& ctx) {
  auto c = co_await tcp_stream::connect(ctx, l.local_endpoint());
  auto s = co_await l.accept();
  if (!c || !s)
    throw std::runtime_error("connect failed");
  co_return pair_t{std::move(*c), std::move(*s)};
}

tcp_listener listen(io_context& ctx) {
  return tcp_listener::bind(ctx, couring::endpoint::ipv4_loopback(0), {.backlog = 1024}).value();
}

// Returns the KiB of buffer memory pinned by 1,000 held 64 B leases.
double held(const mode& m, int conns) {
  io_context ctx;
  buffer_pool pool(ctx, 2048, 4096, m.options);
  auto l = listen(ctx);
  double pinned_kib = 0;
  auto body = [&]() -> task<void> {
    std::vector<pair_t> pairs;
    std::vector<buffer_lease> leases;
    char msg[64];
    std::memset(msg, 'm', sizeof msg);
    for (int i = 0; i < conns; ++i)
      pairs.push_back(co_await connect_pair(l, ctx));
    for (auto& p : pairs) {
      (void)co_await p.client.write_all(std::as_bytes(std::span(msg)));
      auto r = co_await p.server.receive(pool);
      if (r)
        leases.push_back(std::move(*r));
    }
    // Buffers out of the kernel's hands, plus the one it is filling (INC).
    const std::size_t out = pool.count() - pool.available();
    pinned_kib = static_cast<double>(out + (pool.incremental() ? 1 : 0)) * 4.0;
    if (leases.size() != static_cast<std::size_t>(conns))
      std::fprintf(stderr, "held: lost leases\n");
  };
  ctx.run(body());
  return pinned_kib;
}

struct bulk_result {
  double cpu_us_per_mib;
  double completions_per_mib;
};

bulk_result bulk(const mode& m, std::size_t mib) {
  io_context ctx;
  buffer_pool pool(ctx, 64, 4096, m.options);
  auto l = listen(ctx);
  bulk_result out{};
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(l, ctx);
    const std::size_t total = mib << 20;
    auto sender = [&]() -> task<void> {
      std::vector<std::byte> chunk(64 * 1024, std::byte{'b'});
      for (std::size_t sent = 0; sent < total; sent += chunk.size())
        if (!co_await p.client.write_all(chunk))
          break;
      (void)p.client.shutdown_write();
    };
    const double t0 = cpu_seconds();
    const auto c0 = pool.stats().completions;
    ctx.spawn(sender());
    std::size_t got = 0;
    for (;;) {
      auto r = co_await p.server.receive(pool);
      if (!r || r->empty())
        break;
      got += r->size();
    }
    const double t1 = cpu_seconds();
    if (got != total)
      std::fprintf(stderr, "bulk: got %zu of %zu\n", got, total);
    out.cpu_us_per_mib = (t1 - t0) * 1e6 / static_cast<double>(mib);
    out.completions_per_mib =
        static_cast<double>(pool.stats().completions - c0) / static_cast<double>(mib);
  };
  ctx.run(body());
  return out;
}

double echo(const mode& m, std::size_t size, int rounds) {
  io_context ctx;
  buffer_pool pool(ctx, 64, 4096, m.options);
  auto l = listen(ctx);
  double us = 0;
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(l, ctx);
    auto server = [&]() -> task<void> {
      for (;;) {
        auto r = co_await p.server.receive(pool);
        if (!r || r->empty())
          co_return;
        if (!co_await p.server.write_all(r->data()))
          co_return;
      }
    };
    ctx.spawn(server());
    std::vector<std::byte> out(size, std::byte{'e'}), in(size);
    const double t0 = cpu_seconds();
    for (int i = 0; i < rounds; ++i) {
      if (!co_await p.client.write_all(out))
        break;
      if (!co_await p.client.read_exactly(in))
        break;
    }
    us = (cpu_seconds() - t0) * 1e6 / rounds;
    (void)p.client.shutdown_write();
  };
  ctx.run(body());
  return us;
}

} // namespace

int main(int argc, char** argv) {
  int repeat = 3;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--repeat" && i + 1 < argc)
      repeat = std::atoi(argv[++i]);
    else if (a == "--quick")
      quick = true;
    else {
      std::fprintf(stderr, "usage: pool_modes [--repeat N] [--quick]\n");
      return 2;
    }
  }
  {
    io_context probe;
    buffer_pool p(probe, 1, 4096);
    std::printf("kernel: incremental %s, bundles %s\n", p.incremental() ? "yes" : "no",
                p.bundled() ? "yes" : "no");
  }
  const int rounds = quick ? 5'000 : 50'000;
  const std::size_t mib = quick ? 128 : 1024;
  std::printf("%-11s %4s %12s %14s %14s %13s %13s\n", "mode", "run", "held KiB", "bulk us/MiB",
              "bulk cqe/MiB", "echo64 us/rt", "echo4K us/rt");
  for (int run = 1; run <= repeat; ++run)
    for (const mode& m : modes) {
      const double h = held(m, 1000);
      const bulk_result b = bulk(m, mib);
      const double e64 = echo(m, 64, rounds);
      const double e4k = echo(m, 4096, rounds);
      std::printf("%-11s %4d %12.0f %14.1f %14.1f %13.2f %13.2f\n", m.name, run, h,
                  b.cpu_us_per_mib, b.completions_per_mib, e64, e4k);
      std::fflush(stdout);
    }
}
