// loadgen: closed-loop TCP (or Unix socket) ping-pong load generator for the echo
// server benchmarks.
//
// Opens N connections to 127.0.0.1:PORT (never any other host) -- or, with --unix,
// to the Unix socket at PATH ("@name": abstract) -- then each connection
// repeatedly sends one SIZE-byte message, waits for the SIZE echoed bytes, checks every
// byte against what it sent and records the round-trip latency. Single thread, epoll,
// non-blocking sockets. The measurement window starts after the warmup; with
// --server-pid the server's CPU time (utime + stime of all its threads, from
// /proc/PID/stat) is sampled at both ends of the window.
//
//   loadgen (--port P | --unix PATH) [--connections N] [--size BYTES] [--duration S] [--warmup S]
//           [--json FILE] [--server-pid PID] [--min-per-connection N] [--idle N]
//           [--server-counters]
//
// --idle N opens N more connections that stay idle (connected, never sending) while
// the active ones run; one that the server closes or resets is an error. With
// --server-pid the server's resident memory (VmRSS) is read before the first connect
// and at the end of the window, so that the memory an idle connection costs the server
// can be computed (server_rss_growth_kib / idle). The server's voluntary context switches
// (all its threads, /proc/PID/task/*/status) are sampled with its CPU time. With
// --server-counters it is also sent SIGUSR1 at both ends of the window, so that a server
// that prints its own counters on SIGUSR1 (echo_server, echo_raw_uring: system calls,
// completions) brackets the window; the caller takes the difference.
//
// Every connection must do its share: the report gives the fewest verified round trips
// any one connection completed in the window, and a connection below
// --min-per-connection (default 1) is a failure -- a server that serves most connections
// and starves or ignores a few must not pass.
//
// Exit status: 0 on success, 1 if any error occurred or a connection completed fewer
// verified round trips than the floor in the window, 2 on bad usage.

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <string>
#include <string_view>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <vector>

namespace {

constexpr const char* kHost = "127.0.0.1";
constexpr double kConnectTimeoutSeconds = 10.0;
constexpr std::size_t kMaxSize = 64u << 20;

[[noreturn]] void usage(const char* msg) {
  if (msg != nullptr)
    std::fprintf(stderr, "loadgen: %s\n", msg);
  std::fprintf(stderr,
               "usage: loadgen (--port P | --unix PATH) [--connections N] [--size BYTES]\n"
               "               [--duration SECONDS] [--warmup SECONDS] [--json FILE]\n"
               "               [--server-pid PID] [--min-per-connection N] [--idle N]\n"
               "               [--server-counters]\n"
               "TCP always connects to %s; --unix PATH connects to a Unix socket\n"
               "(a path, or @name for an abstract one).\n",
               kHost);
  std::exit(2);
}

struct Options {
  int port = -1;
  std::string unix_path; // non-empty: a Unix socket instead of TCP
  int connections = 1;
  std::size_t size = 64;
  double duration = 3.0;
  double warmup = 0.5;
  std::string json;
  long server_pid = -1;
  long min_per_connection = 1;  // verified round trips every connection must complete
  int idle = 0;                 // extra connections that stay idle
  bool server_counters = false; // SIGUSR1 to the server at both ends of the window
};

long parse_long(std::string_view name, const std::string& v, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < lo || x > hi) {
    std::string m = "invalid value for " + std::string(name) + ": '" + v + "'";
    usage(m.c_str());
  }
  return x;
}

double parse_double(std::string_view name, const std::string& v, double lo, double hi) {
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno != 0 || !std::isfinite(x) || x < lo || x > hi) {
    std::string m = "invalid value for " + std::string(name) + ": '" + v + "'";
    usage(m.c_str());
  }
  return x;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help")
      usage(nullptr);
    if (arg == "--server-counters") {
      o.server_counters = true;
      continue;
    }
    std::string value;
    if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg.resize(eq);
    } else {
      if (i + 1 >= argc) {
        std::string m = "missing value for " + arg;
        usage(m.c_str());
      }
      value = argv[++i];
    }
    if (arg == "--port")
      o.port = static_cast<int>(parse_long(arg, value, 1, 65535));
    else if (arg == "--unix") {
      if (value.empty() || value.size() >= sizeof(sockaddr_un::sun_path))
        usage("--unix needs a path shorter than 108 bytes");
      o.unix_path = value;
    } else if (arg == "--host") {
      if (value != kHost) {
        std::fprintf(stderr, "loadgen: refusing host '%s': only %s is allowed\n", value.c_str(),
                     kHost);
        std::exit(2);
      }
    } else if (arg == "--connections")
      o.connections = static_cast<int>(parse_long(arg, value, 1, 1000000));
    else if (arg == "--size")
      o.size = static_cast<std::size_t>(parse_long(arg, value, 1, kMaxSize));
    else if (arg == "--duration")
      o.duration = parse_double(arg, value, 0.001, 86400);
    else if (arg == "--warmup")
      o.warmup = parse_double(arg, value, 0, 86400);
    else if (arg == "--json")
      o.json = value;
    else if (arg == "--server-pid")
      o.server_pid = parse_long(arg, value, 1, 1L << 30);
    else if (arg == "--idle")
      o.idle = static_cast<int>(parse_long(arg, value, 0, 1000000));
    else if (arg == "--min-per-connection")
      o.min_per_connection = parse_long(arg, value, 1, 1L << 40);
    else {
      std::string m = "unknown option " + arg;
      usage(m.c_str());
    }
  }
  if (o.port < 0 && o.unix_path.empty())
    usage("--port or --unix is required");
  if (o.port >= 0 && !o.unix_path.empty())
    usage("--port and --unix exclude each other");
  return o;
}

std::int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// utime + stime of the whole process (all threads, live and exited), in seconds.
std::optional<double> process_cpu_seconds(long pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return std::nullopt;
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return std::nullopt;
  buf[n] = '\0';
  // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
  char* p = std::strrchr(buf, ')');
  if (p == nullptr)
    return std::nullopt;
  ++p;
  // Fields after the name: 3 state, 4 ppid, ... 14 utime, 15 stime.
  unsigned long long utime = 0, stime = 0;
  int field = 3;
  char* save = nullptr;
  for (char* tok = strtok_r(p, " ", &save); tok != nullptr; tok = strtok_r(nullptr, " ", &save)) {
    if (field == 14)
      utime = std::strtoull(tok, nullptr, 10);
    else if (field == 15) {
      stime = std::strtoull(tok, nullptr, 10);
      long hz = sysconf(_SC_CLK_TCK);
      return static_cast<double>(utime + stime) / static_cast<double>(hz > 0 ? hz : 100);
    }
    ++field;
  }
  return std::nullopt;
}

// Voluntary context switches of every thread of a process (each sleep in a system call
// is one): /proc/PID/status has the main thread's only.
std::optional<std::uint64_t> process_voluntary_switches(long pid) {
  char dir_path[64];
  std::snprintf(dir_path, sizeof dir_path, "/proc/%ld/task", pid);
  DIR* dir = opendir(dir_path);
  if (dir == nullptr)
    return std::nullopt;
  std::uint64_t total = 0;
  bool any = false;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.')
      continue;
    char path[128];
    std::snprintf(path, sizeof path, "/proc/%ld/task/%s/status", pid, e->d_name);
    FILE* f = std::fopen(path, "r");
    if (f == nullptr)
      continue; // the thread just ended
    char line[256];
    while (std::fgets(line, sizeof line, f) != nullptr)
      if (std::strncmp(line, "voluntary_ctxt_switches:", 24) == 0) {
        total += std::strtoull(line + 24, nullptr, 10);
        any = true;
      }
    std::fclose(f);
  }
  closedir(dir);
  if (!any)
    return std::nullopt;
  return total;
}

// VmRSS of a process, in KiB.
std::optional<long> process_rss_kib(long pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%ld/status", pid);
  FILE* f = std::fopen(path, "r");
  if (f == nullptr)
    return std::nullopt;
  char line[256];
  std::optional<long> kib;
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::strncmp(line, "VmRSS:", 6) == 0)
      kib = std::strtol(line + 6, nullptr, 10);
  std::fclose(f);
  return kib;
}

// Content of byte `pos` of message `seq` on connection `conn`: a splitmix64 stream keyed by
// (conn, seq), so a byte echoed at the wrong position, on the wrong connection or from an
// earlier message does not match.
void fill_pattern(std::uint8_t* buf, std::size_t size, std::uint32_t conn, std::uint64_t seq) {
  std::uint64_t state = (static_cast<std::uint64_t>(conn) << 40) ^ (seq * 0xD1B54A32D192ED03ull);
  std::size_t i = 0;
  while (i < size) {
    state += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::size_t k = std::min<std::size_t>(8, size - i);
    std::memcpy(buf + i, &z, k);
    i += k;
  }
}

struct Conn {
  int fd = -1;
  std::uint32_t id = 0;
  bool alive = false;
  bool want_out = false; // EPOLLOUT is in the interest set
  std::uint64_t seq = 0;
  std::size_t sent = 0;
  std::size_t received = 0;
  std::int64_t started_ns = 0;
  std::uint64_t round_trips = 0; // verified, inside the window
  std::uint8_t* sbuf = nullptr;
  std::uint8_t* rbuf = nullptr;
};

struct Stats {
  std::uint64_t round_trips = 0; // verified round trips completed inside the window
  std::uint64_t errors = 0;      // connection errors + corrupted round trips
  std::uint64_t byte_errors = 0; // mismatching bytes
  std::uint64_t corrupt_round_trips = 0;
  std::vector<std::uint32_t> latencies_ns; // of the round trips inside the window
};

class Loadgen {
public:
  Loadgen(const Options& o) : opt_(o) {}

  int run();

private:
  bool connect_all();
  void start_round(Conn& c, std::int64_t now);
  void on_event(Conn& c, std::uint32_t events);
  void do_send(Conn& c);
  void do_recv(Conn& c);
  void complete_round(Conn& c);
  void fail(Conn& c, const char* what, int err);
  void set_interest(Conn& c, bool want_out);

  Options opt_;
  int ep_ = -1;
  std::vector<Conn> conns_;
  std::unique_ptr<std::uint8_t[]> buffers_;
  std::size_t live_ = 0;
  bool measuring_ = false;
  Stats st_;
  unsigned reported_failures_ = 0;
};

void Loadgen::fail(Conn& c, const char* what, int err) {
  ++st_.errors;
  if (reported_failures_ < 5) {
    ++reported_failures_;
    std::fprintf(stderr, "loadgen: connection %u: %s: %s\n", c.id, what,
                 err != 0 ? std::strerror(err) : "unexpected end of stream");
  }
  if (c.fd >= 0) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
  }
  c.fd = -1;
  if (c.alive) {
    c.alive = false;
    --live_;
  }
}

void Loadgen::set_interest(Conn& c, bool want_out) {
  if (c.want_out == want_out)
    return;
  epoll_event ev{};
  ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0u);
  ev.data.u32 = c.id;
  if (epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev) != 0) {
    fail(c, "epoll_ctl", errno);
    return;
  }
  c.want_out = want_out;
}

bool Loadgen::connect_all() {
  // The idle connections come after the active ones; they need no buffers.
  const int n = opt_.connections + opt_.idle;
  conns_.resize(static_cast<std::size_t>(n));
  buffers_ =
      std::make_unique<std::uint8_t[]>(2 * opt_.size * static_cast<std::size_t>(opt_.connections));

  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  const bool unix_socket = !opt_.unix_path.empty();
  if (unix_socket) {
    auto* un = reinterpret_cast<sockaddr_un*>(&addr);
    un->sun_family = AF_UNIX;
    std::memcpy(un->sun_path, opt_.unix_path.data(), opt_.unix_path.size());
    if (opt_.unix_path[0] == '@')
      un->sun_path[0] = '\0'; // abstract: the name's length is the address's
    addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + opt_.unix_path.size() +
                                      (opt_.unix_path[0] == '@' ? 0 : 1));
  } else {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    in->sin_family = AF_INET;
    in->sin_port = htons(static_cast<std::uint16_t>(opt_.port));
    if (inet_pton(AF_INET, kHost, &in->sin_addr) != 1)
      return false;
    addr_len = sizeof(sockaddr_in);
  }

  std::size_t pending = 0;
  for (int i = 0; i < n; ++i) {
    Conn& c = conns_[static_cast<std::size_t>(i)];
    c.id = static_cast<std::uint32_t>(i);
    if (i < opt_.connections) {
      c.sbuf = buffers_.get() + 2 * opt_.size * static_cast<std::size_t>(i);
      c.rbuf = c.sbuf + opt_.size;
    }
    // A non-blocking Unix connect fails with EAGAIN when the backlog is full
    // (it never completes later, unlike TCP's EINPROGRESS): Unix sockets
    // connect blocking, then turn non-blocking.
    c.fd = socket(unix_socket ? AF_UNIX : AF_INET,
                  SOCK_STREAM | SOCK_CLOEXEC | (unix_socket ? 0 : SOCK_NONBLOCK), 0);
    if (c.fd < 0) {
      fail(c, "socket", errno);
      continue;
    }
    int one = 1;
    if (!unix_socket)
      setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c.alive = true;
    ++live_;
    if (connect(c.fd, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0 && errno != EINPROGRESS) {
      fail(c, "connect", errno);
      continue;
    }
    if (unix_socket && fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK) != 0) {
      fail(c, "fcntl", errno);
      continue;
    }
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u32 = c.id;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
      fail(c, "epoll_ctl", errno);
      continue;
    }
    c.want_out = true;
    ++pending;
  }

  // Wait for every connect to finish (or fail), bounded in time.
  const std::int64_t deadline = now_ns() + static_cast<std::int64_t>(kConnectTimeoutSeconds * 1e9);
  std::vector<epoll_event> evs(1024);
  std::vector<bool> done(static_cast<std::size_t>(n), false);
  while (pending > 0) {
    std::int64_t left = deadline - now_ns();
    if (left <= 0)
      break;
    int k = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()),
                       static_cast<int>(left / 1'000'000 + 1));
    if (k < 0) {
      if (errno == EINTR)
        continue;
      std::perror("loadgen: epoll_wait");
      return false;
    }
    for (int j = 0; j < k; ++j) {
      Conn& c = conns_[evs[static_cast<std::size_t>(j)].data.u32];
      if (!c.alive || done[c.id])
        continue;
      done[c.id] = true;
      --pending;
      int err = 0;
      socklen_t len = sizeof err;
      if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
      if (err != 0) {
        fail(c, "connect", err);
        continue;
      }
      set_interest(c, false);
    }
  }
  for (Conn& c : conns_) {
    if (c.alive && !done[c.id])
      fail(c, "connect", ETIMEDOUT);
  }
  return true;
}

void Loadgen::start_round(Conn& c, std::int64_t now) {
  ++c.seq;
  fill_pattern(c.sbuf, opt_.size, c.id, c.seq);
  c.sent = 0;
  c.received = 0;
  c.started_ns = now;
  do_send(c);
}

void Loadgen::do_send(Conn& c) {
  while (c.sent < opt_.size) {
    ssize_t r = send(c.fd, c.sbuf + c.sent, opt_.size - c.sent, MSG_NOSIGNAL);
    if (r > 0) {
      c.sent += static_cast<std::size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_interest(c, true);
      return;
    }
    fail(c, "send", r < 0 ? errno : EPIPE);
    return;
  }
  set_interest(c, false);
}

void Loadgen::complete_round(Conn& c) {
  const std::int64_t now = now_ns();
  bool ok = std::memcmp(c.sbuf, c.rbuf, opt_.size) == 0;
  if (!ok) {
    std::uint64_t bad = 0;
    for (std::size_t i = 0; i < opt_.size; ++i)
      bad += c.sbuf[i] != c.rbuf[i];
    st_.byte_errors += bad;
    ++st_.corrupt_round_trips;
    ++st_.errors;
    if (reported_failures_ < 5) {
      ++reported_failures_;
      std::fprintf(stderr,
                   "loadgen: connection %u message %" PRIu64 ": %" PRIu64
                   " of %zu echoed bytes differ\n",
                   c.id, c.seq, bad, opt_.size);
    }
  }
  if (measuring_ && ok) {
    ++st_.round_trips;
    ++c.round_trips;
    std::int64_t lat = now - c.started_ns;
    st_.latencies_ns.push_back(
        static_cast<std::uint32_t>(std::clamp<std::int64_t>(lat, 0, UINT32_MAX)));
  }
  start_round(c, now);
}

void Loadgen::do_recv(Conn& c) {
  while (c.alive && c.received < opt_.size) {
    ssize_t r = recv(c.fd, c.rbuf + c.received, opt_.size - c.received, 0);
    if (r > 0) {
      c.received += static_cast<std::size_t>(r);
      if (c.received > c.sent) {
        // More bytes came back than were sent so far: not an echo.
        ++st_.byte_errors;
        fail(c, "received bytes that were never sent", EPROTO);
        return;
      }
      if (c.received == opt_.size) {
        complete_round(c);
        return; // the next echo cannot be there yet; wait for epoll
      }
      continue;
    }
    if (r == 0) {
      fail(c, "recv", 0);
      return;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return;
    fail(c, "recv", errno);
    return;
  }
}

void Loadgen::on_event(Conn& c, std::uint32_t events) {
  if (!c.alive)
    return;
  if (c.sbuf == nullptr) {
    // An idle connection hears nothing unless the server drops it.
    char b;
    const ssize_t r = recv(c.fd, &b, 1, MSG_DONTWAIT);
    if (r > 0)
      fail(c, "an idle connection received data", EPROTO);
    else if (r == 0 || (errno != EAGAIN && errno != EINTR))
      fail(c, "idle connection", r == 0 ? 0 : errno);
    return;
  }
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
    do_recv(c);
  if (c.alive && (events & EPOLLOUT) && c.sent < opt_.size)
    do_send(c);
}

int Loadgen::run() {
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  if (ep_ < 0) {
    std::perror("loadgen: epoll_create1");
    return 1;
  }
  std::optional<long> rss_before, rss_during;
  if (opt_.server_pid > 0)
    rss_before = process_rss_kib(opt_.server_pid);
  if (!connect_all())
    return 1;
  if (live_ == 0) {
    if (!opt_.unix_path.empty())
      std::fprintf(stderr, "loadgen: no connection could be established to %s\n",
                   opt_.unix_path.c_str());
    else
      std::fprintf(stderr, "loadgen: no connection could be established to %s:%d\n", kHost,
                   opt_.port);
    return 1;
  }
  const std::size_t connected = live_;

  const std::int64_t t0 = now_ns();
  for (Conn& c : conns_) {
    if (c.alive && c.sbuf != nullptr)
      start_round(c, t0);
  }

  const std::int64_t warm_end = t0 + static_cast<std::int64_t>(opt_.warmup * 1e9);
  const auto window_ns = static_cast<std::int64_t>(opt_.duration * 1e9);
  std::int64_t win_start = 0, win_end = 0;
  std::optional<double> cpu_start, cpu_end;
  std::optional<std::uint64_t> vcsw_start, vcsw_end;
  bool server_gone = false;
  rusage ru_start{}, ru_end{};
  st_.latencies_ns.reserve(1 << 20);

  std::vector<epoll_event> evs(1024);
  for (;;) {
    std::int64_t now = now_ns();
    if (!measuring_ && now >= warm_end) {
      measuring_ = true;
      if (opt_.server_pid > 0) {
        if (opt_.server_counters)
          kill(static_cast<pid_t>(opt_.server_pid), SIGUSR1);
        cpu_start = process_cpu_seconds(opt_.server_pid);
        vcsw_start = process_voluntary_switches(opt_.server_pid);
      }
      getrusage(RUSAGE_SELF, &ru_start);
      win_start = now_ns();
      now = win_start;
    }
    if (measuring_ && (now - win_start >= window_ns || live_ == 0)) {
      win_end = now;
      getrusage(RUSAGE_SELF, &ru_end);
      if (opt_.server_pid > 0) {
        if (opt_.server_counters)
          kill(static_cast<pid_t>(opt_.server_pid), SIGUSR1);
        cpu_end = process_cpu_seconds(opt_.server_pid);
        vcsw_end = process_voluntary_switches(opt_.server_pid);
        rss_during = process_rss_kib(opt_.server_pid); // every connection still open
      }
      break;
    }
    if (live_ == 0) { // every connection failed during the warmup: nothing measured
      win_start = win_end = now;
      getrusage(RUSAGE_SELF, &ru_start);
      ru_end = ru_start;
      break;
    }
    std::int64_t deadline = measuring_ ? win_start + window_ns : warm_end;
    int timeout_ms = static_cast<int>((deadline - now + 999'999) / 1'000'000);
    int k = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), timeout_ms);
    if (k < 0) {
      if (errno == EINTR)
        continue;
      std::perror("loadgen: epoll_wait");
      return 1;
    }
    for (int j = 0; j < k; ++j) {
      const epoll_event& ev = evs[static_cast<std::size_t>(j)];
      on_event(conns_[ev.data.u32], ev.events);
    }
  }
  if (live_ == 0)
    std::fprintf(stderr, "loadgen: every connection failed\n");
  if (opt_.server_pid > 0 && measuring_ && (!cpu_start || !cpu_end)) {
    std::fprintf(stderr, "loadgen: cannot read /proc/%ld/stat (server gone?)\n", opt_.server_pid);
    server_gone = true;
    ++st_.errors;
  }
  for (Conn& c : conns_) {
    if (c.fd >= 0)
      close(c.fd);
    c.fd = -1;
  }
  close(ep_);

  // Report.
  const double secs = static_cast<double>(win_end - win_start) / 1e9;
  const double rps = secs > 0 ? static_cast<double>(st_.round_trips) / secs : 0.0;
  auto& lat = st_.latencies_ns;
  auto percentile_us = [&lat](double q) {
    if (lat.empty())
      return 0.0;
    auto idx = static_cast<std::size_t>(q * static_cast<double>(lat.size() - 1) + 0.5);
    std::nth_element(lat.begin(), lat.begin() + static_cast<std::ptrdiff_t>(idx), lat.end());
    return static_cast<double>(lat[idx]) / 1e3;
  };
  double mean_us = 0;
  for (auto v : lat)
    mean_us += static_cast<double>(v);
  mean_us = lat.empty() ? 0.0 : mean_us / static_cast<double>(lat.size()) / 1e3;
  const double p50 = percentile_us(0.50);
  const double p99 = percentile_us(0.99);
  const double p999 = percentile_us(0.999);
  const double max_us =
      lat.empty() ? 0.0 : static_cast<double>(*std::max_element(lat.begin(), lat.end())) / 1e3;
  auto tv = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  const double client_cpu =
      tv(ru_end.ru_utime) + tv(ru_end.ru_stime) - tv(ru_start.ru_utime) - tv(ru_start.ru_stime);
  const bool have_cpu = opt_.server_pid > 0 && measuring_ && !server_gone;
  const double server_cpu = have_cpu ? *cpu_end - *cpu_start : 0.0;
  const double server_cpu_per_rt = have_cpu && st_.round_trips > 0
                                       ? server_cpu * 1e6 / static_cast<double>(st_.round_trips)
                                       : 0.0;

  // Every connection counts, the ones that failed included (they completed what they
  // completed before failing).
  std::uint64_t min_rt = UINT64_MAX;
  std::size_t starved = 0;
  std::size_t idle_alive = 0;
  for (const Conn& c : conns_) {
    if (c.sbuf == nullptr) {
      idle_alive += c.alive;
      continue;
    }
    min_rt = std::min(min_rt, c.round_trips);
    if (c.round_trips < static_cast<std::uint64_t>(opt_.min_per_connection)) {
      if (starved < 5)
        std::fprintf(stderr,
                     "loadgen: connection %u completed %" PRIu64
                     " verified round trips in the window, fewer than %ld\n",
                     c.id, c.round_trips, opt_.min_per_connection);
      ++starved;
    }
  }
  if (conns_.empty())
    min_rt = 0;
  if (starved > 0)
    std::fprintf(stderr, "loadgen: %zu of %zu connections below --min-per-connection %ld\n",
                 starved, conns_.size(), opt_.min_per_connection);

  std::printf("connections=%d (%zu connected) size=%zu seconds=%.3f round_trips=%" PRIu64
              " round_trips_per_sec=%.0f p50_us=%.1f p99_us=%.1f errors=%" PRIu64
              " byte_errors=%" PRIu64 " min_round_trips_per_connection=%" PRIu64
              " connections_below_floor=%zu",
              opt_.connections, connected, opt_.size, secs, st_.round_trips, rps, p50, p99,
              st_.errors, st_.byte_errors, min_rt, starved);
  if (have_cpu)
    std::printf(" server_cpu_seconds=%.2f server_cpu_us_per_round_trip=%.3f", server_cpu,
                server_cpu_per_rt);
  const bool have_rss = rss_before && rss_during;
  if (opt_.idle > 0)
    std::printf(" idle=%d idle_alive=%zu", opt_.idle, idle_alive);
  if (have_rss)
    std::printf(" server_rss_before_kib=%ld server_rss_kib=%ld", *rss_before, *rss_during);
  if (have_rss && opt_.idle > 0)
    std::printf(" server_bytes_per_idle_connection=%.0f",
                static_cast<double>(*rss_during - *rss_before) * 1024.0 / opt_.idle);
  std::printf("\n");
  std::fflush(stdout);

  if (!opt_.json.empty()) {
    const std::string host = opt_.unix_path.empty() ? std::string(kHost) : "unix:" + opt_.unix_path;
    FILE* f = std::fopen(opt_.json.c_str(), "w");
    if (f == nullptr) {
      std::perror("loadgen: cannot write the JSON file");
      return 1;
    }
    std::fprintf(
        f,
        "{\n  \"host\": \"%s\",\n  \"port\": %d,\n  \"connections\": %d,\n"
        "  \"connected\": %zu,\n  \"size\": %zu,\n  \"warmup_seconds\": %.3f,\n"
        "  \"seconds\": %.6f,\n  \"round_trips\": %" PRIu64 ",\n  \"round_trips_per_sec\": %.1f,\n"
        "  \"mean_us\": %.2f,\n  \"p50_us\": %.2f,\n  \"p99_us\": %.2f,\n"
        "  \"p999_us\": %.2f,\n  \"max_us\": %.2f,\n  \"errors\": %" PRIu64
        ",\n  \"byte_errors\": %" PRIu64 ",\n  \"corrupt_round_trips\": %" PRIu64
        ",\n  \"client_cpu_seconds\": %.4f,\n"
        "  \"min_round_trips_per_connection\": %" PRIu64 ",\n  \"connections_below_floor\": %zu",
        host.c_str(), opt_.port, opt_.connections, connected, opt_.size, opt_.warmup, secs,
        st_.round_trips, rps, mean_us, p50, p99, p999, max_us, st_.errors, st_.byte_errors,
        st_.corrupt_round_trips, client_cpu, min_rt, starved);
    std::fprintf(f, ",\n  \"idle\": %d,\n  \"idle_alive\": %zu", opt_.idle, idle_alive);
    if (have_rss)
      std::fprintf(f,
                   ",\n  \"server_rss_before_kib\": %ld,\n  \"server_rss_kib\": %ld,\n"
                   "  \"server_bytes_per_idle_connection\": %.1f",
                   *rss_before, *rss_during,
                   opt_.idle > 0
                       ? static_cast<double>(*rss_during - *rss_before) * 1024.0 / opt_.idle
                       : 0.0);
    if (opt_.server_pid > 0) {
      std::fprintf(f, ",\n  \"server_pid\": %ld", opt_.server_pid);
      if (have_cpu)
        std::fprintf(f,
                     ",\n  \"server_cpu_seconds\": %.4f,\n"
                     "  \"server_cpu_us_per_round_trip\": %.4f",
                     server_cpu, server_cpu_per_rt);
      else
        std::fprintf(f, ",\n  \"server_cpu_seconds\": null,\n"
                        "  \"server_cpu_us_per_round_trip\": null");
      if (have_cpu && vcsw_start && vcsw_end && st_.round_trips > 0)
        std::fprintf(f,
                     ",\n  \"server_voluntary_switches\": %" PRIu64
                     ",\n  \"server_voluntary_switches_per_round_trip\": %.5f",
                     *vcsw_end - *vcsw_start,
                     static_cast<double>(*vcsw_end - *vcsw_start) /
                         static_cast<double>(st_.round_trips));
    }
    std::fprintf(f, "\n}\n");
    if (std::fclose(f) != 0) {
      std::perror("loadgen: cannot write the JSON file");
      return 1;
    }
  }

  if (st_.errors > 0 || st_.byte_errors > 0 || st_.round_trips == 0 || starved > 0)
    return 1;
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  Options opt = parse_args(argc, argv);

  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      static_cast<rlim_t>(opt.connections) + static_cast<rlim_t>(opt.idle) + 16 > rl.rlim_cur) {
    std::fprintf(stderr, "loadgen: %d connections exceed the open file limit (%llu)\n",
                 opt.connections + opt.idle, static_cast<unsigned long long>(rl.rlim_cur));
    return 2;
  }

  Loadgen lg(opt);
  return lg.run();
}
