// echo_blocking: the baseline for the echo benchmarks, a blocking thread-per-connection
// TCP echo server on 127.0.0.1:PORT.
//
//   echo_blocking PORT
//
// The main thread blocks in accept(); each connection gets a detached std::thread that
// loops read() / write-all until end of stream or error. Runs until SIGTERM or SIGINT
// (default disposition: the process ends).

#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <system_error>
#include <thread>
#include <unistd.h>

namespace {

constexpr std::size_t kBufferSize = 16 * 1024;

void serve(int fd) {
  char buf[kBufferSize];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    ssize_t off = 0;
    while (off < n) {
      ssize_t w = send(fd, buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0) {
        close(fd);
        return;
      }
      off += w;
    }
  }
  close(fd);
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: echo_blocking PORT   (listens on 127.0.0.1:PORT)\n");
    return 2;
  }
  char* end = nullptr;
  long port = std::strtol(argv[1], &end, 10);
  if (*argv[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
    std::fprintf(stderr, "echo_blocking: invalid port '%s'\n", argv[1]);
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) {
    std::perror("echo_blocking: socket");
    return 1;
  }
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(lfd, SOMAXCONN) != 0) {
    std::perror("echo_blocking: bind/listen");
    return 1;
  }

  for (;;) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        usleep(10'000); // out of resources: let some connections finish
      continue;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    try {
      std::thread(serve, fd).detach();
    } catch (const std::system_error&) {
      close(fd); // cannot start a thread: drop the connection
    }
  }
}
