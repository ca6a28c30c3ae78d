// stream_bench: single-stream echo throughput over one TCP connection on
// 127.0.0.1 (issue #11). A client sends BYTES (4 GiB by default) of a
// deterministic pattern, the server echoes them, the client reads everything
// back and checks every byte. A mismatch, a short stream or a failing server
// fails the run (exit status 1).
//
//   stream_bench [--quick] [--bytes N] [--buffer N] [--runs R] [--sockbuf N]
//                [--servers a,b,...] [--json FILE]
//
// Servers, each in a child process forked for its run (so that its CPU time
// is exactly what wait4 reports); all use one buffer of --buffer bytes unless
// said otherwise, and the same socket buffer sizes:
//   blocking       read(2) -> write(2) loop
//   epoll          non-blocking, level-triggered: recv/send until EAGAIN, then
//                  wait for the one readiness the loop needs
//   uring          raw liburing: recv -> send (rest, if short) -> recv,
//                  one io_uring_submit_and_wait per request
//   uring2         raw liburing, two buffers in lock step: the send of one
//                  and the recv into the other submitted together
//   couring        co_await stream.read(buf) -> co_await stream.write_all(...)
//   couring2       couring, two buffers in lock step (when_all of a write_all
//                  and a read)
//   couring-pool   couring, co_await stream.receive(pool) -> write_all: a
//                  pool of 4 buffers of --buffer bytes, one multishot receive
//   couring-fixed  couring, read_fixed -> write_fixed (registered buffers)
//   couring-epoll  couring on its epoll backend (read -> write_all)
//   couring-relay  couring, co_await relay(s, s) then shutdown_write: the
//                  bytes go socket -> pipe -> socket by IORING_OP_SPLICE and
//                  never reach user space; splices of --buffer bytes, a
//                  pipe of twice that
// Only when named with --servers (slow over loopback: see kExtraServers):
//   couring-zc     couring with io_context_options::zero_copy_threshold =
//                  16 KiB (write_all sends with IORING_OP_SEND_ZC)
//   couring-relay-nb     couring-relay on a non-blocking socket (short
//                  splices wait with polls instead of in io-wq workers)
//   couring-relay-epoll  couring-relay on the epoll backend (plain splice(2))
//   uring-fixed    raw liburing, one registered buffer: READ_FIXED, then
//                  SEND_ZC with IORING_RECVSEND_FIXED_BUF (does a registered
//                  send pay? plain SEND refuses the flag)
//
// The client (the same for every server): one blocking socket, a sender thread
// that sends straight out of the pattern table, and the main thread receiving
// into a 1 MiB buffer and comparing each chunk with the table (memcmp). The
// pattern is a table of a prime period (1,000,003 bytes), so that no buffer
// size lines up with it and a reordered or repeated chunk is caught.
//
// Output: one line per run (GB/s = bytes echoed / wall time from connect to
// the last byte received; server CPU seconds per GiB echoed = user + system
// time of the server process), then a table of all runs per server.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <couring/couring.hpp>

namespace {

constexpr std::size_t kPeriod = 1'000'003;     // prime: no buffer size lines up with it
constexpr std::size_t kMaxChunk = 1024 * 1024; // client send/receive chunk
constexpr unsigned kPoolBuffers = 4;           // couring-pool: buffers in the pool
constexpr int kTimeoutSeconds = 60;            // no progress for this long fails the run

std::vector<unsigned char> make_table() {
  // table[i] = pattern(i % kPeriod), kMaxChunk bytes beyond the period so that
  // any chunk starting inside the period is contiguous.
  std::vector<unsigned char> t(kPeriod + kMaxChunk);
  std::uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (std::size_t i = 0; i < kPeriod; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t[i] = static_cast<unsigned char>(x >> 32);
  }
  for (std::size_t i = kPeriod; i < t.size(); ++i) // kMaxChunk > kPeriod: not one copy
    t[i] = t[i - kPeriod];
  return t;
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "stream_bench: %s: %s\n", what, std::strerror(errno));
  _exit(2);
}

void set_sockbuf(int fd, int bytes) {
  if (bytes <= 0)
    return;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) != 0)
    die("setsockopt SO_SNDBUF/SO_RCVBUF");
}

// --- servers: each serves the one connection on fd until end of stream and
// returns 0, or non-zero on an error. -----------------------------------------

bool write_all_blocking(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

int serve_blocking(int fd, std::size_t size) {
  std::vector<char> buf(size);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), size);
    if (n == 0)
      return 0;
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return 1;
    }
    if (!write_all_blocking(fd, buf.data(), static_cast<std::size_t>(n)))
      return 1;
  }
}

int serve_epoll(int fd, std::size_t size) {
  std::vector<char> buf(size);
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
    return 1;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
    return 1;
  std::uint32_t interest = EPOLLIN;
  std::size_t len = 0, off = 0;
  // Try the transfer first; only EAGAIN waits, for the one event it needs.
  auto wait_for = [&](std::uint32_t what) {
    if (interest != what) {
      ev.events = what;
      if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) != 0)
        return false;
      interest = what;
    }
    epoll_event out{};
    while (epoll_wait(ep, &out, 1, -1) < 0)
      if (errno != EINTR)
        return false;
    return true;
  };
  for (;;) {
    if (off < len) {
      ssize_t w = ::send(fd, buf.data() + off, len - off, MSG_NOSIGNAL);
      if (w > 0) {
        off += static_cast<std::size_t>(w);
      } else if (errno == EAGAIN) {
        if (!wait_for(EPOLLOUT))
          return 1;
      } else if (errno != EINTR) {
        return 1;
      }
      continue;
    }
    ssize_t n = ::recv(fd, buf.data(), size, 0);
    if (n > 0) {
      len = static_cast<std::size_t>(n);
      off = 0;
    } else if (n == 0) {
      ::close(ep);
      return 0;
    } else if (errno == EAGAIN) {
      if (!wait_for(EPOLLIN))
        return 1;
    } else if (errno != EINTR) {
      return 1;
    }
  }
}

// The same ring set-up as examples' raw server (benchmarks/echo_raw_uring.cpp):
// single issuer, deferred task running where the kernel has them.
bool setup_ring(io_uring& ring) {
  io_uring_params p{};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
  p.cq_entries = 1024;
  if (io_uring_queue_init_params(256, &ring, &p) == 0)
    return true;
  return io_uring_queue_init(256, &ring, 0) == 0;
}

// One request, then its completion.
int uring_one(io_uring& ring) {
  io_uring_cqe* cqe = nullptr;
  int r = io_uring_submit_and_wait(&ring, 1);
  if (r < 0 && r != -EINTR)
    return r;
  while ((r = io_uring_wait_cqe(&ring, &cqe)) == -EINTR) {
  }
  if (r < 0)
    return r;
  int res = cqe->res;
  io_uring_cqe_seen(&ring, cqe);
  return res;
}

int serve_uring(int fd, std::size_t size) {
  io_uring ring;
  if (!setup_ring(ring))
    return 1;
  std::vector<char> buf(size);
  for (;;) {
    io_uring_prep_recv(io_uring_get_sqe(&ring), fd, buf.data(), size, 0);
    int n = uring_one(ring);
    if (n == 0)
      return 0;
    if (n < 0)
      return 1;
    for (int off = 0; off < n;) {
      io_uring_prep_send(io_uring_get_sqe(&ring), fd, buf.data() + off,
                         static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
      int w = uring_one(ring);
      if (w <= 0)
        return 1;
      off += w;
    }
  }
}

// recv into a registered buffer (READ_FIXED), send out of it with
// IORING_OP_SEND_ZC + IORING_RECVSEND_FIXED_BUF: the kernel (6.18) refuses
// the flag on a plain IORING_OP_SEND (EINVAL), so a registered send is a
// zero-copy one. liburing 2.3 has no helper for the fixed variant: the SQE is
// set by hand. The buffer is reused only after the notification CQE.
int serve_uring_fixed(int fd, std::size_t size) {
  io_uring ring;
  if (!setup_ring(ring))
    return 1;
  std::vector<char> buf(size);
  iovec iov{buf.data(), size};
  if (io_uring_register_buffers(&ring, &iov, 1) != 0)
    return 1;
  for (;;) {
    io_uring_prep_read_fixed(io_uring_get_sqe(&ring), fd, buf.data(), static_cast<unsigned>(size),
                             static_cast<__u64>(-1), 0);
    int n = uring_one(ring);
    if (n == 0)
      return 0;
    if (n < 0)
      return 1;
    for (int off = 0; off < n;) {
      io_uring_sqe* s = io_uring_get_sqe(&ring);
      io_uring_prep_send_zc(s, fd, buf.data() + off, static_cast<std::size_t>(n - off),
                            MSG_NOSIGNAL, IORING_RECVSEND_FIXED_BUF);
      s->buf_index = 0;
      int w = 0;
      bool more = true, got_result = false;
      while (!got_result || more) { // the result, then (if F_MORE) the notification
        io_uring_cqe* cqe = nullptr;
        int r = io_uring_submit_and_wait(&ring, 1);
        if (r < 0 && r != -EINTR)
          return 1;
        if (io_uring_peek_cqe(&ring, &cqe) != 0)
          continue;
        if (cqe->flags & IORING_CQE_F_NOTIF) {
          more = false;
        } else {
          got_result = true;
          w = cqe->res;
          more = (cqe->flags & IORING_CQE_F_MORE) != 0;
        }
        io_uring_cqe_seen(&ring, cqe);
      }
      if (w <= 0) {
        std::fprintf(stderr, "stream_bench: uring-fixed: send: %s\n", std::strerror(-w));
        return 1;
      }
      off += w;
    }
  }
}

// Two buffers in lock step: send buffer i while receiving into the other;
// both requests go in with one submit, the loop waits for both.
int serve_uring2(int fd, std::size_t size) {
  io_uring ring;
  if (!setup_ring(ring))
    return 1;
  std::vector<char> bufs[2] = {std::vector<char>(size), std::vector<char>(size)};
  io_uring_prep_recv(io_uring_get_sqe(&ring), fd, bufs[0].data(), size, 0);
  int n = uring_one(ring);
  int i = 0;
  while (n > 0) {
    // The send of bufs[i][0, n) (looping on short sends) and one recv into the other.
    int off = 0, next = -1;
    bool recv_done = false;
    io_uring_sqe* s = io_uring_get_sqe(&ring);
    io_uring_prep_send(s, fd, bufs[i].data(), static_cast<std::size_t>(n), MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, 1);
    s = io_uring_get_sqe(&ring);
    io_uring_prep_recv(s, fd, bufs[1 - i].data(), size, 0);
    io_uring_sqe_set_data64(s, 2);
    while (off < n || !recv_done) {
      if (int r = io_uring_submit_and_wait(&ring, 1); r < 0 && r != -EINTR)
        return 1;
      io_uring_cqe* cqe = nullptr;
      unsigned head, seen = 0;
      io_uring_for_each_cqe(&ring, head, cqe) {
        ++seen;
        if (cqe->user_data == 2) {
          recv_done = true;
          next = cqe->res;
          continue;
        }
        if (cqe->res <= 0)
          return 1;
        off += cqe->res;
        if (off < n) {
          s = io_uring_get_sqe(&ring);
          io_uring_prep_send(s, fd, bufs[i].data() + off, static_cast<std::size_t>(n - off),
                             MSG_NOSIGNAL);
          io_uring_sqe_set_data64(s, 1);
        }
      }
      io_uring_cq_advance(&ring, seen);
    }
    n = next;
    i = 1 - i;
  }
  return n == 0 ? 0 : 1;
}

couring::task<int> couring_echo(couring::stream& s, std::size_t size) {
  std::vector<std::byte> buf(size);
  for (;;) {
    auto n = co_await s.read(buf);
    if (!n)
      co_return 1;
    if (*n == 0)
      co_return 0;
    if (!co_await s.write_all(std::span(buf).first(*n)))
      co_return 1;
  }
}

couring::task<couring::result<std::size_t>> read_part(couring::stream& s, std::span<std::byte> b) {
  co_return co_await s.read(b);
}
couring::task<couring::result<void>> write_part(couring::stream& s, std::span<const std::byte> b) {
  co_return co_await s.write_all(b);
}

couring::task<int> couring_echo2(couring::stream& s, std::size_t size) {
  std::vector<std::byte> bufs[2] = {std::vector<std::byte>(size), std::vector<std::byte>(size)};
  auto first = co_await s.read(bufs[0]);
  if (!first)
    co_return 1;
  std::size_t n = *first;
  for (int i = 0; n > 0; i = 1 - i) {
    auto [w, r] = co_await couring::when_all(write_part(s, std::span(bufs[i]).first(n)),
                                             read_part(s, bufs[1 - i]));
    if (!w || !r)
      co_return 1;
    n = *r;
  }
  co_return 0;
}

couring::task<int> couring_echo_fixed(couring::stream& s, couring::registered_buffers& bufs) {
  auto buf = bufs.buffer(0);
  for (;;) {
    auto n = co_await couring::read_fixed(s, bufs, buf);
    if (!n)
      co_return 1;
    if (*n == 0)
      co_return 0;
    for (std::size_t off = 0; off < *n;) {
      auto w = co_await couring::write_fixed(s, bufs, buf.subspan(off, *n - off));
      if (!w)
        co_return 1;
      off += *w;
    }
  }
}

// The kernel fills pool buffers while the previous chunk is being sent (one
// multishot receive): receiving and sending overlap with no second coroutine.
couring::task<int> couring_echo_pool(couring::stream& s, couring::buffer_pool& pool) {
  for (;;) {
    auto chunk = co_await s.receive(pool);
    if (!chunk)
      co_return 1;
    if (chunk->empty())
      co_return 0;
    if (!co_await s.write_all(chunk->data()))
      co_return 1;
  }
}

// The whole echo is one relay: from the socket to itself, until the client's
// end of stream, then the end passed on.
couring::task<int> couring_echo_relay(couring::stream& s, std::size_t size) {
  couring::relay_options o;
  // Splices of --buffer bytes, a pipe of two: the next fill overlaps the
  // drain of the last, as two buffers in lock step do (couring2, uring2).
  o.pipe_size = 2 * size;
  o.chunk = size;
  auto n = co_await couring::relay(s, s, std::numeric_limits<std::size_t>::max(), o);
  if (!n)
    co_return 1;
  co_return s.shutdown_write() ? 0 : 1;
}

int serve_couring(int fd, std::size_t size, std::string_view variant) {
  couring::io_context_options o;
  if (variant == "couring-epoll" || variant == "couring-relay-epoll")
    o.backend = couring::backend::epoll;
  if (variant == "couring-zc")
    o.zero_copy_threshold = 16 * 1024; // every send of this benchmark is zero-copy
  couring::io_context ctx(o);
  couring::tcp_stream s(ctx, fd);
  if (variant == "couring2")
    return ctx.run(couring_echo2(s, size));
  if (variant == "couring-pool") {
    couring::buffer_pool pool(ctx, kPoolBuffers, size);
    return ctx.run(couring_echo_pool(s, pool));
  }
  if (variant == "couring-fixed") {
    couring::registered_buffers bufs(ctx, 1, size);
    return ctx.run(couring_echo_fixed(s, bufs));
  }
  if (variant.starts_with("couring-relay")) {
    if (variant == "couring-relay-nb" && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
      return 1;
    return ctx.run(couring_echo_relay(s, size));
  }
  return ctx.run(couring_echo(s, size));
}

// For the smoke test of the checker itself (tests/stream_bench_smoke.sh): an
// echo that alters one byte (corrupt) or stops half-way (short) must fail.
int serve_faulty(int fd, std::size_t size, bool corrupt) {
  std::vector<char> buf(size);
  std::uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), size);
    if (n <= 0)
      return n == 0 ? 0 : 1;
    if (corrupt && total <= 5'000'000 && total + static_cast<std::uint64_t>(n) > 5'000'000)
      buf[5'000'000 - total] ^= 1;
    total += static_cast<std::uint64_t>(n);
    if (!corrupt && total > 5'000'000) {
      // Ends the echo early, cleanly (the client reads end of stream), and
      // swallows the rest so that no reset hides the short stream.
      shutdown(fd, SHUT_WR);
      while ((n = ::read(fd, buf.data(), size)) > 0) {
      }
      return 0;
    }
    if (!write_all_blocking(fd, buf.data(), static_cast<std::size_t>(n)))
      return 1;
  }
}

int serve(std::string_view name, int fd, std::size_t size) {
  if (name == "faulty-corrupt" || name == "faulty-short")
    return serve_faulty(fd, size, name == "faulty-corrupt");
  if (name == "blocking")
    return serve_blocking(fd, size);
  if (name == "epoll")
    return serve_epoll(fd, size);
  if (name == "uring")
    return serve_uring(fd, size);
  if (name == "uring-fixed")
    return serve_uring_fixed(fd, size);
  if (name == "uring2")
    return serve_uring2(fd, size);
  return serve_couring(fd, size, name);
}

// Run by default, in this order (interleaved: every server once per run).
const char* const kServers[] = {"blocking",      "epoll",        "uring",        "uring2",
                                "couring",       "couring2",     "couring-pool", "couring-fixed",
                                "couring-epoll", "couring-relay"};
// Only with --servers: the zero-copy sends are 3 to 8 times slower over loopback
// (README, "One connection"), and would dominate the run time.
const char* const kExtraServers[] = {"couring-zc",          "uring-fixed",    "couring-relay-nb",
                                     "couring-relay-epoll", "faulty-corrupt", "faulty-short"};

// --- the client ---------------------------------------------------------------

struct run_result {
  bool ok = false;
  double seconds = 0;
  double server_cpu = 0;
  std::string error;
};

run_result run_one(std::string_view server, std::uint64_t bytes, std::size_t size, int sockbuf,
                   const std::vector<unsigned char>& table) {
  run_result out;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0)
    die("socket");
  set_sockbuf(lfd, sockbuf); // inherited by the accepted socket
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(lfd, 1) != 0 ||
      getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &alen) != 0)
    die("bind/listen");

  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0)
    die("fork");
  if (pid == 0) {
    // Bounded: a server that hangs is killed, and the client's timeouts end its run.
    // (4 GiB through a zero-copy variant at 64 KiB takes about a minute.)
    alarm(static_cast<unsigned>(std::max<std::uint64_t>(300, bytes >> 24)));
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0)
      die("accept");
    ::close(lfd);
    int rc = 1;
    try {
      rc = serve(server, fd, size);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "stream_bench: %.*s server: %s\n", static_cast<int>(server.size()),
                   server.data(), e.what());
    }
    if (!server.starts_with("couring"))
      ::close(fd); // a couring stream adopted it and has closed it
    _exit(rc);
  }

  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  set_sockbuf(fd, sockbuf);
  timeval tv{kTimeoutSeconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  ::close(lfd);
  const auto start = std::chrono::steady_clock::now();
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    out.error = std::string("connect: ") + std::strerror(errno);
    kill(pid, SIGKILL); // it waits in accept for a client that will not come
  } else {
    std::atomic<bool> send_failed{false};
    std::thread sender([&] {
      for (std::uint64_t off = 0; off < bytes;) {
        const std::size_t n =
            static_cast<std::size_t>(std::min<std::uint64_t>(kMaxChunk, bytes - off));
        ssize_t w = ::send(fd, table.data() + off % kPeriod, n, MSG_NOSIGNAL);
        if (w <= 0) {
          if (w < 0 && errno == EINTR)
            continue;
          send_failed = true;
          break;
        }
        off += static_cast<std::uint64_t>(w);
      }
      shutdown(fd, SHUT_WR);
    });
    std::vector<unsigned char> buf(kMaxChunk);
    std::uint64_t got = 0;
    for (;;) {
      ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0) {
        out.error = std::string("recv: ") + std::strerror(errno);
        shutdown(fd, SHUT_RDWR); // unblocks the sender
        break;
      }
      if (n == 0)
        break;
      if (got + static_cast<std::uint64_t>(n) > bytes ||
          std::memcmp(buf.data(), table.data() + got % kPeriod, static_cast<std::size_t>(n)) != 0) {
        std::size_t i = 0;
        while (i < static_cast<std::size_t>(n) && got + i < bytes &&
               buf[i] == table[(got + i) % kPeriod])
          ++i;
        out.error = "mismatch at byte " + std::to_string(got + i);
        shutdown(fd, SHUT_RDWR);
        break;
      }
      got += static_cast<std::uint64_t>(n);
    }
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    sender.join();
    if (out.error.empty() && send_failed)
      out.error = "send failed";
    if (out.error.empty() && got != bytes)
      out.error =
          "short stream: " + std::to_string(got) + " of " + std::to_string(bytes) + " bytes";
  }
  ::close(fd);
  int status = 0;
  rusage ru{};
  while (wait4(pid, &status, 0, &ru) < 0)
    if (errno != EINTR)
      die("wait4");
  out.server_cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                   static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
    out.error +=
        (out.error.empty() ? "" : "; ") +
        (WIFEXITED(status) ? "server exited " + std::to_string(WEXITSTATUS(status))
                           : "server killed by signal " + std::to_string(WTERMSIG(status)));
  out.ok = out.error.empty();
  return out;
}

std::uint64_t parse_size(const char* s) {
  char* end = nullptr;
  double v = std::strtod(s, &end);
  std::string_view unit(end);
  if (unit == "K" || unit == "KiB")
    v *= 1024;
  else if (unit == "M" || unit == "MiB")
    v *= 1024 * 1024;
  else if (unit == "G" || unit == "GiB")
    v *= 1024.0 * 1024 * 1024;
  else if (!unit.empty() || v < 0) {
    std::fprintf(stderr, "stream_bench: bad size '%s'\n", s);
    std::exit(2);
  }
  return static_cast<std::uint64_t>(v);
}

} // namespace

int main(int argc, char** argv) {
  std::uint64_t bytes = 4ULL << 30;
  std::size_t size = 256 * 1024;
  int runs = 1;
  int sockbuf = 0;
  std::string json;
  std::vector<std::string> servers(std::begin(kServers), std::end(kServers));
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "stream_bench: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick")
      bytes = 256ULL << 20;
    else if (a == "--bytes")
      bytes = parse_size(value());
    else if (a == "--buffer")
      size = static_cast<std::size_t>(parse_size(value()));
    else if (a == "--runs")
      runs = std::atoi(value());
    else if (a == "--sockbuf")
      sockbuf = static_cast<int>(parse_size(value()));
    else if (a == "--json")
      json = value();
    else if (a == "--servers") {
      servers.clear();
      std::string list = value();
      for (std::size_t p = 0; p <= list.size();) {
        std::size_t q = list.find(',', p);
        if (q == std::string::npos)
          q = list.size();
        if (std::find(servers.begin(), servers.end(), list.substr(p, q - p)) == servers.end())
          servers.push_back(list.substr(p, q - p));
        p = q + 1;
      }
    } else {
      std::fprintf(stderr, "usage: stream_bench [--quick] [--bytes N] [--buffer N] [--runs R] "
                           "[--sockbuf N] [--servers a,b,...] [--json FILE]\n");
      return 2;
    }
  }
  for (const auto& s : servers)
    if (std::find(std::begin(kServers), std::end(kServers), s) == std::end(kServers) &&
        std::find(std::begin(kExtraServers), std::end(kExtraServers), s) ==
            std::end(kExtraServers)) {
      std::fprintf(stderr, "stream_bench: unknown server '%s'\n", s.c_str());
      return 2;
    }
  if (size == 0 || size > (1U << 30) || runs < 1) {
    std::fprintf(stderr, "stream_bench: bad --buffer or --runs\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  const auto table = make_table();
  std::printf("stream_bench: %.3f GiB per run, buffer %zu B, sockbuf %s, %d run(s)\n",
              static_cast<double>(bytes) / (1 << 30), size,
              sockbuf > 0 ? std::to_string(sockbuf).c_str() : "default", runs);
  std::map<std::string, std::vector<run_result>> all;
  bool failed = false;
  for (int r = 1; r <= runs; ++r)
    for (const auto& s : servers) { // interleaved: every server once per run
      run_result res = run_one(s, bytes, size, sockbuf, table);
      const double gib = static_cast<double>(bytes) / (1 << 30);
      if (res.ok)
        std::printf("run %d %-14s %6.2f GB/s  server CPU %.3f s/GiB\n", r, s.c_str(),
                    static_cast<double>(bytes) / res.seconds / 1e9, res.server_cpu / gib);
      else
        std::printf("run %d %-14s FAILED: %s\n", r, s.c_str(), res.error.c_str());
      std::fflush(stdout);
      failed |= !res.ok;
      all[s].push_back(res);
    }
  std::printf("\n%-14s %-8s %-8s %s\n", "server", "median", "CPU s/",
              "GB/s per run (server CPU s/GiB)");
  std::printf("%-14s %-8s %-8s\n", "", "GB/s", "GiB");
  FILE* j = json.empty() ? nullptr : std::fopen(json.c_str(), "w");
  if (j != nullptr)
    std::fprintf(j, "{\"bytes\": %llu, \"buffer\": %zu, \"sockbuf\": %d, \"servers\": {",
                 static_cast<unsigned long long>(bytes), size, sockbuf);
  bool first = true;
  for (const auto& s : servers) {
    // Medians over the runs (a failed run counts as 0 GB/s).
    std::vector<double> g, c;
    for (const auto& res : all[s]) {
      g.push_back(res.ok ? static_cast<double>(bytes) / res.seconds / 1e9 : 0);
      c.push_back(res.server_cpu / (static_cast<double>(bytes) / (1 << 30)));
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    };
    std::printf("%-14s %6.2f   %6.3f  ", s.c_str(), median(g), median(c));
    if (j != nullptr)
      std::fprintf(j, "%s\"%s\": [", first ? "" : ", ", s.c_str());
    first = false;
    bool first_run = true;
    for (const auto& res : all[s]) {
      const double gbps = res.ok ? static_cast<double>(bytes) / res.seconds / 1e9 : 0;
      const double cpu = res.server_cpu / (static_cast<double>(bytes) / (1 << 30));
      if (res.ok)
        std::printf(" %6.2f (%.3f)", gbps, cpu);
      else
        std::printf("  failed      ");
      if (j != nullptr)
        std::fprintf(j, "%s{\"ok\": %s, \"gb_per_s\": %.4f, \"server_cpu_s_per_gib\": %.4f}",
                     first_run ? "" : ", ", res.ok ? "true" : "false", gbps, cpu);
      first_run = false;
    }
    std::printf("\n");
    if (j != nullptr)
      std::fprintf(j, "]");
    all.erase(s);
  }
  if (j != nullptr) {
    std::fprintf(j, "}}\n");
    std::fclose(j);
  }
  return failed ? 1 : 0;
}
