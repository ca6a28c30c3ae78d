// echo_epoll: a hand-written single-threaded epoll TCP echo server on
// 127.0.0.1:PORT, the "as fast as a plain epoll loop" reference for couring's
// epoll backend (benchmarks/run.sh compares it with examples/echo_server
// under COURING_BACKEND=epoll).
//
//   echo_epoll PORT
//
// The same protocol as echo_raw_uring: every byte received is sent back. The
// loop is the classic one: non-blocking sockets, level-triggered EPOLLIN,
// one recv per readiness into the connection's own 16 KiB buffer, the echo
// sent at once, and EPOLLOUT asked for only while a send is short (the rest
// waits for room, reads pause meanwhile). SIGTERM / SIGINT arrive through a
// signalfd in the same epoll set.

#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

constexpr std::size_t kBufferSize = 16 * 1024;
constexpr int kMaxEvents = 256;

struct Conn {
  int fd = -1;
  unsigned len = 0; // bytes received and being echoed
  unsigned off = 0; // bytes of them already sent
  char buf[kBufferSize];
};

// data.u64 of the listener and the signalfd; connections use their pointer.
constexpr std::uint64_t kListener = 1;
constexpr std::uint64_t kSignal = 2;

struct Server {
  int ep = -1;
  int listen_fd = -1;
  int signal_fd = -1;
  bool stop = false;

  void watch(Conn* c, std::uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = c;
    epoll_ctl(ep, op, c->fd, &ev);
  }

  void close_conn(Conn* c) {
    ::close(c->fd); // also leaves the epoll set (no dup of it exists)
    delete c;
  }

  void on_listener() {
    for (;;) {
      const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0)
        return; // EAGAIN, or EMFILE and friends: the next readiness retries
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      Conn* c = new Conn;
      c->fd = fd;
      watch(c, EPOLLIN, EPOLL_CTL_ADD);
    }
  }

  // Sends what is left; false when the connection is gone.
  bool flush(Conn* c) {
    while (c->off < c->len) {
      const ssize_t n = ::send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN) {
          watch(c, EPOLLOUT, EPOLL_CTL_MOD); // the rest when there is room
          return true;
        }
        return false;
      }
      c->off += static_cast<unsigned>(n);
    }
    return true;
  }

  void on_conn(Conn* c, std::uint32_t events) {
    if (c->off < c->len) {
      // Waiting for room to send the rest.
      if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0)
        return;
      if (!flush(c)) {
        close_conn(c);
        return;
      }
      if (c->off == c->len)
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
      return;
    }
    const ssize_t n = ::recv(c->fd, c->buf, kBufferSize, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      return;
    if (n <= 0) {
      close_conn(c); // end of stream or error
      return;
    }
    c->len = static_cast<unsigned>(n);
    c->off = 0;
    if (!flush(c))
      close_conn(c);
  }

  int run() {
    epoll_event events[kMaxEvents];
    while (!stop) {
      const int n = epoll_wait(ep, events, kMaxEvents, -1);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        std::perror("echo_epoll: epoll_wait");
        return 1;
      }
      for (int i = 0; i < n; ++i) {
        const std::uint64_t tag = events[i].data.u64;
        if (tag == kListener) {
          on_listener();
        } else if (tag == kSignal) {
          signalfd_siginfo si;
          if (::read(signal_fd, &si, sizeof si) == static_cast<ssize_t>(sizeof si))
            stop = true;
        } else {
          on_conn(static_cast<Conn*>(events[i].data.ptr), events[i].events);
        }
      }
    }
    return 0;
  }
};

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: echo_epoll PORT   (listens on 127.0.0.1:PORT)\n");
    return 2;
  }
  char* end = nullptr;
  long port = std::strtol(argv[1], &end, 10);
  if (*argv[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
    std::fprintf(stderr, "echo_epoll: invalid port '%s'\n", argv[1]);
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  static Server srv;
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  srv.signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  srv.ep = epoll_create1(EPOLL_CLOEXEC);
  if (srv.signal_fd < 0 || srv.ep < 0) {
    std::perror("echo_epoll: signalfd/epoll_create1");
    return 1;
  }
  srv.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (srv.listen_fd < 0) {
    std::perror("echo_epoll: socket");
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
    std::perror("echo_epoll: bind/listen");
    return 1;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListener;
  epoll_ctl(srv.ep, EPOLL_CTL_ADD, srv.listen_fd, &ev);
  ev.data.u64 = kSignal;
  epoll_ctl(srv.ep, EPOLL_CTL_ADD, srv.signal_fd, &ev);
  return srv.run();
}
