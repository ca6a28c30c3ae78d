// echo_raw_uring: a hand-written single-threaded liburing TCP echo server on
// 127.0.0.1:PORT, the "as fast as raw liburing" reference for the echo benchmarks.
//
//   echo_raw_uring PORT
//
// One ring (single issuer, deferred task running, CQ four times the SQ), one multishot
// accept, and per connection a chain recv -> send (rest, if short) -> recv using the
// connection's own 16 KiB buffer. Every loop turn is one io_uring_submit_and_wait(ring, 1)
// followed by reaping all completions. SIGTERM / SIGINT arrive through a signalfd read on
// the ring, so the server stops cleanly even while idle.
//
// SIGUSR1 (benchmarks/loadgen --server-counters sends one at each end of its window)
// prints one line to stderr: "counters enters=E cqes=C sqes=S", the io_uring_enter calls,
// completions reaped and requests prepared so far (pool_bench.sh takes the difference).
// Counting is a few increments per loop turn, nothing per system call.

#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

// The same ring size as couring's io_context (256 SQ entries, a CQ four times
// that), so that the comparison is of the code, not of the queue depth.
constexpr unsigned kSqEntries = 256;
constexpr unsigned kCqEntries = 4 * kSqEntries;
constexpr std::size_t kBufferSize = 16 * 1024;

// user_data = connection pointer | operation (connections are at least 8-byte aligned).
enum Op : std::uintptr_t { kAccept = 0, kRecv = 1, kSend = 2, kClose = 3, kSignal = 4 };
constexpr std::uintptr_t kOpMask = 7;

struct alignas(16) Conn {
  int fd = -1;
  unsigned len = 0; // bytes received and being echoed
  unsigned off = 0; // bytes of them already sent
  Conn* prev = nullptr;
  Conn* next = nullptr;
  char buf[kBufferSize];
};

struct Server {
  io_uring ring{};
  int listen_fd = -1;
  int signal_fd = -1;
  signalfd_siginfo siginfo{};
  Conn* conns = nullptr; // all open connections, for the shutdown
  bool stop = false;
  // For the benchmarks: io_uring_enter calls (every submit below enters: it waits or
  // the SQ is full), CQEs reaped, SQEs prepared.
  unsigned long long enters = 0, cqes = 0, sqes = 0;

  io_uring_sqe* sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&ring);
    while (s == nullptr) { // SQ full: push what is queued to the kernel
      io_uring_submit(&ring);
      ++enters;
      s = io_uring_get_sqe(&ring);
    }
    ++sqes;
    return s;
  }

  static std::uint64_t tag(Conn* c, Op op) {
    return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(c) | op);
  }

  void arm_accept() {
    io_uring_sqe* s = sqe();
    io_uring_prep_multishot_accept(s, listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(s, tag(nullptr, kAccept));
  }

  void arm_signal() {
    io_uring_sqe* s = sqe();
    io_uring_prep_read(s, signal_fd, &siginfo, sizeof siginfo, 0);
    io_uring_sqe_set_data64(s, tag(nullptr, kSignal));
  }

  void recv(Conn* c) {
    io_uring_sqe* s = sqe();
    io_uring_prep_recv(s, c->fd, c->buf, kBufferSize, 0);
    io_uring_sqe_set_data64(s, tag(c, kRecv));
  }

  void send(Conn* c) {
    io_uring_sqe* s = sqe();
    io_uring_prep_send(s, c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, tag(c, kSend));
  }

  void close_conn(Conn* c) {
    io_uring_sqe* s = sqe();
    io_uring_prep_close(s, c->fd);
    io_uring_sqe_set_data64(s, tag(nullptr, kClose));
    if (c->prev != nullptr)
      c->prev->next = c->next;
    else
      conns = c->next;
    if (c->next != nullptr)
      c->next->prev = c->prev;
    delete c;
  }

  void on_accept(const io_uring_cqe* cqe) {
    if (!(cqe->flags & IORING_CQE_F_MORE))
      arm_accept(); // the multishot accept ended: re-arm it
    if (cqe->res < 0)
      return; // e.g. EMFILE, or a connection reset before it was accepted
    int fd = cqe->res;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Conn* c = new Conn;
    c->fd = fd;
    c->next = conns;
    if (conns != nullptr)
      conns->prev = c;
    conns = c;
    recv(c);
  }

  void on_recv(Conn* c, int res) {
    if (res <= 0) {
      if (res == -EINTR || res == -EAGAIN) {
        recv(c);
        return;
      }
      close_conn(c); // end of stream or error
      return;
    }
    c->len = static_cast<unsigned>(res);
    c->off = 0;
    send(c);
  }

  void on_send(Conn* c, int res) {
    if (res <= 0) {
      if (res == -EINTR || res == -EAGAIN) {
        send(c);
        return;
      }
      close_conn(c);
      return;
    }
    c->off += static_cast<unsigned>(res);
    if (c->off < c->len)
      send(c); // short send: the rest
    else
      recv(c);
  }

  void handle(const io_uring_cqe* cqe) {
    const auto ud = static_cast<std::uintptr_t>(io_uring_cqe_get_data64(cqe));
    Conn* c = reinterpret_cast<Conn*>(ud & ~kOpMask);
    switch (static_cast<Op>(ud & kOpMask)) {
    case kRecv:
      on_recv(c, cqe->res);
      break;
    case kSend:
      on_send(c, cqe->res);
      break;
    case kAccept:
      on_accept(cqe);
      break;
    case kSignal:
      if (cqe->res == static_cast<int>(sizeof siginfo) && siginfo.ssi_signo != SIGUSR1) {
        stop = true;
        break;
      }
      if (cqe->res == static_cast<int>(sizeof siginfo))
        std::fprintf(stderr, "counters enters=%llu cqes=%llu sqes=%llu\n", enters, cqes, sqes);
      arm_signal();
      break;
    case kClose:
      break;
    }
  }

  int run() {
    arm_accept();
    arm_signal();
    while (!stop) {
      int r = io_uring_submit_and_wait(&ring, 1);
      ++enters;
      if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
        std::fprintf(stderr, "echo_raw_uring: io_uring_submit_and_wait: %s\n", std::strerror(-r));
        return 1;
      }
      unsigned head;
      unsigned count = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring, head, cqe) {
        ++count;
        handle(cqe);
      }
      io_uring_cq_advance(&ring, count);
      cqes += count;
    }
    return 0;
  }
};

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: echo_raw_uring PORT   (listens on 127.0.0.1:PORT)\n");
    return 2;
  }
  char* end = nullptr;
  long port = std::strtol(argv[1], &end, 10);
  if (*argv[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
    std::fprintf(stderr, "echo_raw_uring: invalid port '%s'\n", argv[1]);
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  static Server srv; // static: keeps the ring out of main's frame, no allocation needed

  // SIGTERM / SIGINT are consumed through a signalfd read on the ring.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGUSR1);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  srv.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC);
  if (srv.signal_fd < 0) {
    std::perror("echo_raw_uring: signalfd");
    return 1;
  }

  srv.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (srv.listen_fd < 0) {
    std::perror("echo_raw_uring: socket");
    return 1;
  }
  int one = 1;
  setsockopt(srv.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(srv.listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(srv.listen_fd, SOMAXCONN) != 0) {
    std::perror("echo_raw_uring: bind/listen");
    return 1;
  }

  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                 IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
  params.cq_entries = kCqEntries;
  int r = io_uring_queue_init_params(kSqEntries, &srv.ring, &params);
  if (r == -EINVAL) { // older kernel: plain ring
    params = io_uring_params{};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = kCqEntries;
    r = io_uring_queue_init_params(kSqEntries, &srv.ring, &params);
  }
  if (r < 0) {
    std::fprintf(stderr, "echo_raw_uring: io_uring_queue_init_params: %s\n", std::strerror(-r));
    return 1;
  }
  io_uring_register_ring_fd(&srv.ring); // optional: saves the fd lookup per io_uring_enter

  int rc = srv.run();

  // The ring is torn down asynchronously and its pending multishot accept holds the listening
  // socket: shut it down first so the port is free as soon as this process has exited.
  shutdown(srv.listen_fd, SHUT_RDWR);
  io_uring_queue_exit(&srv.ring); // cancels the outstanding requests
  while (srv.conns != nullptr) {
    Conn* c = srv.conns;
    srv.conns = c->next;
    close(c->fd);
    delete c;
  }
  close(srv.listen_fd);
  close(srv.signal_fd);
  return rc;
}
