// A single-threaded echo server: every byte a client sends comes back, until
// the client closes -- over TCP, and also over a Unix socket (--unix) and as
// UDP datagrams on the same port (--udp). Thousands of connections on one
// io_context, one coroutine each; peers that reset or vanish only end their
// own coroutine. One echo() serves every kind of stream.
//
//   echo_server PORT [--address ADDR] [--buffer BYTES] [--pool COUNT] [--pool-options LIST]
//               [--grace SECONDS] [--udp] [--unix PATH]
//
//   echo_server PORT --threads N [--reuseport | --handoff] [--pool COUNT] [--address ADDR]
//               [--buffer BYTES] [--wait-batch N[:US]]
//
// --threads N serves TCP on N threads, one io_context each (couring::runtime):
// with --reuseport (the default) every context has its own SO_REUSEPORT
// listener and the kernel spreads connections; with --handoff one listener on
// context 0 hands connections to the contexts round-robin. N = 0: one thread
// per CPU the process may use. With --pool each context has its own pool (a
// pool belongs to one ring). --wait-batch sets io_context_options::wait_batch
// (and wait_batch_timeout, default 20 us) for every context: the benchmark
// knob of benchmarks/threads_bench.sh (off by default; see docs/design.md).
//
// --pool: connections hold no buffer of their own; the kernel picks one
// from a shared pool of COUNT buffers when data arrives (stream::receive,
// a multishot receive into a provided buffer ring), so memory grows with
// traffic rather than with connections. --pool-options turns the pool's
// incremental consumption and bundled receives on or off (LIST: any of inc,
// noinc, bundle, nobundle, comma-separated; default: both where the kernel
// has them), to compare their cost.
//
// SIGINT/SIGTERM (read through a couring::signal_set) stop it: it stops
// accepting, lets the connections still open finish within the grace period,
// closes the rest, and exits 0. SIGUSR1 (without --threads) prints the loop's
// counters to stderr: "counters enters=E cqes=C sqes=S" (io_uring_enter
// calls, completions and requests so far; benchmarks/pool_bench.sh).

#include <algorithm>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <pthread.h>
#include <sys/resource.h>

#include <couring/couring.hpp>

namespace {

// The open connections, so that a stop can close the ones that outlive the
// grace period. Each connection's coroutine links its own node (in its
// frame): no allocation.
struct connection_list {
  struct node {
    connection_list* list;
    couring::stream* stream;
    node* prev = nullptr;
    node* next = nullptr;
    node(connection_list& l, couring::stream& s) : list(&l), stream(&s) {
      next = l.head;
      if (next != nullptr)
        next->prev = this;
      l.head = this;
    }
    ~node() {
      (prev != nullptr ? prev->next : list->head) = next;
      if (next != nullptr)
        next->prev = prev;
    }
    node(const node&) = delete;
    node& operator=(const node&) = delete;
  };
  node* head = nullptr;

  bool empty() const { return head == nullptr; }
  void close_all() {
    for (node* n = head; n != nullptr; n = n->next)
      n->stream->close(); // the pending read ends with operation_canceled
  }
};

// How connections get their buffers: their own (size bytes each), or a
// lease from a shared pool.
struct buffers {
  std::size_t size;
  couring::buffer_pool* pool; // nullptr: each connection owns a buffer
};

// One connection, whatever kind of stream it is: read what is there, send it
// all back, repeat. The buffer is allocated once (or leased from the pool
// while a chunk is echoed); the loop allocates nothing.
couring::task<void> echo(couring::stream& stream, buffers b, connection_list& live) {
  connection_list::node registered(live, stream);
  if (b.pool != nullptr) {
    for (;;) {
      auto chunk = co_await stream.receive(*b.pool);
      if (!chunk || chunk->empty())
        co_return;
      // One send, as the raw loop does: a small chunk nearly always goes
      // whole, and a single request costs less than write_all's compound
      // one; the rest of a short send goes through write_all.
      auto sent = co_await stream.write(chunk->data());
      if (!sent)
        co_return;
      if (*sent < chunk->size() && !co_await stream.write_all(chunk->data().subspan(*sent)))
        co_return;
    } // the lease ends here: the buffer goes back to the kernel
  }
  std::vector<std::byte> buf(b.size);
  for (;;) {
    auto n = co_await stream.read(buf);
    if (!n || *n == 0)
      co_return; // reset, error, end of stream or closed: the owner's destructor closes
    if (!co_await stream.write_all(std::span(buf).first(*n)))
      co_return;
  }
}

// Each connection's coroutine owns its stream and hands it to echo().
couring::task<void> connection(couring::tcp_stream stream, buffers buffer_size,
                               connection_list& live) {
  (void)stream.set_no_delay(true);
  co_await echo(stream, buffer_size, live);
}
couring::task<void> connection(couring::unix_stream stream, buffers buffer_size,
                               connection_list& live) {
  co_await echo(stream, buffer_size, live);
}

// Accepts on any listener (tcp_listener, unix_listener) until it is closed.
template <class Listener>
couring::task<void> serve(couring::io_context& ctx, Listener& listener, buffers buffer_size,
                          connection_list& live) {
  for (;;) {
    auto conn = co_await listener.accept();
    if (conn) {
      ctx.spawn(connection(std::move(*conn), buffer_size, live));
      continue;
    }
    if (conn.error() == std::errc::operation_canceled)
      co_return; // the listener was closed: stopping
    // EMFILE and friends: the listener backs off by itself; keep serving.
  }
}

// Each datagram back to its sender. One receive buffer, no allocation per
// datagram; a datagram larger than the buffer is echoed truncated.
couring::task<void> serve_datagrams(couring::udp_socket& socket, std::size_t buffer_size) {
  std::vector<std::byte> buf(std::max<std::size_t>(buffer_size, 65536));
  for (;;) {
    auto d = co_await socket.receive_from(buf);
    if (!d) {
      if (d.error() == std::errc::operation_canceled)
        co_return; // stopping
      continue;    // e.g. a refusal reported by an earlier reply's ICMP
    }
    (void)co_await socket.send_to(std::span(buf).first(d->size), d->sender);
  }
}

// What the server listens on.
struct listeners {
  couring::tcp_listener tcp;
  couring::unix_listener unix_socket; // closed unless --unix
  couring::udp_socket udp;            // closed unless --udp
};

// Serves until SIGINT or SIGTERM, then stops in order.
couring::task<void> run_until_signal(couring::io_context& ctx, listeners& l, buffers buffer_size,
                                     std::chrono::milliseconds grace,
                                     couring::signal_set& signals) {
  using namespace std::chrono_literals;
  connection_list live;
  ctx.spawn(serve(ctx, l.tcp, buffer_size, live));
  if (l.unix_socket.is_open())
    ctx.spawn(serve(ctx, l.unix_socket, buffer_size, live));
  if (l.udp.is_open())
    ctx.spawn(serve_datagrams(l.udp, buffer_size.size));
  for (;;) {
    auto sig = co_await signals.wait();
    if (!sig || *sig != SIGUSR1)
      break;
    // For benchmarks/pool_bench.sh (loadgen --server-counters): what the
    // loop has done so far; the caller takes differences.
    std::fprintf(stderr, "counters enters=%llu cqes=%u sqes=%u\n",
                 static_cast<unsigned long long>(ctx.enter_count()), ctx.cqe_count(),
                 ctx.sqe_count());
  }
  // New connections are refused from now on (the Unix socket's file goes).
  l.tcp.close();
  l.unix_socket.close();
  l.udp.close();
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (!live.empty() && std::chrono::steady_clock::now() < deadline)
    (void)co_await couring::sleep_for(ctx, 10ms);
  live.close_all();
  // The closed connections' coroutines end on their next turn; wait for
  // them so that every frame is gone before the context is.
  for (int i = 0; i < 1000 && !live.empty(); ++i)
    (void)co_await couring::sleep_for(ctx, 1ms);
}

// --- --threads: the same connections, on every core -------------------------

struct per_context {
  couring::tcp_listener listener; // --reuseport: this context's own
  connection_list live;
  std::optional<couring::buffer_pool> pool; // --pool: this context's own
  bool serving = false;
};

std::size_t context_index(couring::runtime& rt) {
  for (std::size_t i = 0; i < rt.size(); ++i)
    if (couring::io_context::current() == &rt.context(i))
      return i;
  return 0;
}

// --handoff: a connection adopted by the context it was handed to.
struct handed_connection {
  couring::runtime* rt;
  std::vector<per_context>* contexts;
  std::size_t buffer_size;
  couring::task<void> operator()(couring::tcp_stream stream) const {
    per_context& here = (*contexts)[context_index(*rt)];
    return connection(std::move(stream), buffers{buffer_size, here.pool ? &*here.pool : nullptr},
                      here.live);
  }
};

couring::task<void> serve_threaded(couring::runtime& rt, couring::endpoint ep, bool handoff,
                                   std::size_t buffer_size, std::size_t pool_count,
                                   std::chrono::milliseconds grace) {
  using namespace std::chrono_literals;
  couring::io_context& home = rt.context(0);
  couring::signal_set signals(home, {SIGINT, SIGTERM}); // blocked in every thread by main
  std::vector<per_context> contexts(rt.size());
  // Each context's pool is made on its own thread (a pool belongs to a ring).
  for (std::size_t i = 0; pool_count != 0 && i < rt.size(); ++i) {
    co_await couring::switch_to(rt.context(i));
    contexts[i].pool.emplace(rt.context(i), pool_count, buffer_size);
  }
  co_await couring::switch_to(home);
  // Context 0's listener first: it picks the port (0) that the others share.
  auto first = couring::tcp_listener::bind(home, ep, {.reuse_port = !handoff});
  if (!first)
    throw std::system_error(first.error(), "cannot listen on " + ep.to_string());
  contexts[0].listener = std::move(*first);
  ep = contexts[0].listener.local_endpoint();
  std::cout << "listening on " << ep.to_string() << " with " << rt.size() << " threads ("
            << (handoff ? "handoff" : "reuseport")
            << (home.features().batched_wait ? ", batched wait" : "") << ")" << std::endl;
  auto serve_here = [&](std::size_t i) -> couring::task<void> {
    per_context& me = contexts[i];
    me.serving = true;
    if (i != 0) {
      auto l = couring::tcp_listener::bind(rt.context(i), ep, {.reuse_port = true});
      if (!l)
        throw std::system_error(l.error(), "cannot listen on " + ep.to_string());
      me.listener = std::move(*l);
    }
    co_await serve(rt.context(i), me.listener, buffers{buffer_size, me.pool ? &*me.pool : nullptr},
                   me.live);
    me.serving = false;
  };
  auto hand_off = [&]() -> couring::task<void> {
    contexts[0].serving = true;
    (void)co_await couring::serve_round_robin(rt, contexts[0].listener,
                                              handed_connection{&rt, &contexts, buffer_size});
    contexts[0].serving = false;
  };
  if (handoff) {
    home.spawn(hand_off());
  } else {
    for (std::size_t i = 0; i < rt.size(); ++i)
      couring::spawn_on(rt.context(i), serve_here(i));
  }
  (void)co_await signals.wait();
  // Each context closes its own listener, lets its connections finish
  // within the grace period, then closes the rest (objects are touched only
  // on the context they belong to).
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (std::size_t i = 0; i < rt.size(); ++i) {
    co_await couring::switch_to(rt.context(i));
    contexts[i].listener.close();
  }
  for (std::size_t i = 0; i < rt.size(); ++i) {
    co_await couring::switch_to(rt.context(i));
    couring::io_context& here = rt.context(i);
    while (!contexts[i].live.empty() && std::chrono::steady_clock::now() < deadline)
      (void)co_await couring::sleep_for(here, 10ms);
    contexts[i].live.close_all();
    for (int k = 0; k < 1000 && (!contexts[i].live.empty() || contexts[i].serving); ++k)
      (void)co_await couring::sleep_for(here, 1ms);
    contexts[i].pool.reset(); // on its own thread, after its connections
  }
  co_await couring::switch_to(home);
}

int run_threaded(const couring::endpoint& ep, unsigned long threads, bool handoff,
                 std::size_t buffer_size, std::size_t pool_count, std::chrono::milliseconds grace,
                 const couring::io_context_options& context) {
  // Blocked before the runtime's threads start, so that they inherit the
  // mask and only the signal_set on context 0 sees the signals.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  couring::runtime rt({.threads = static_cast<unsigned>(threads), .context = context});
  rt.run(serve_threaded(rt, ep, handoff, buffer_size, pool_count, grace));
  return 0;
}

void usage(std::FILE* out) {
  std::fputs("usage: echo_server PORT [--address ADDR] [--buffer BYTES] [--pool COUNT] "
             "[--grace SECONDS] [--udp] [--unix PATH]\n"
             "  Echoes every byte back to each client until it closes.\n"
             "  PORT             TCP port to listen on (0: any free port, printed)\n"
             "  --address ADDR   address to listen on (default 127.0.0.1; [::1] for IPv6)\n"
             "  --buffer BYTES   read buffer per connection (default 16384; with --pool,\n"
             "                   the size of each pool buffer, default 4096)\n"
             "  --pool COUNT     receive into a pool of COUNT buffers shared by all\n"
             "                   connections (multishot receive, provided buffer ring)\n"
             "  --pool-options LIST  with --pool: inc|noinc (incremental consumption),\n"
             "                   bundle|nobundle (bundled receives), comma-separated\n"
             "                   (default: inc,bundle where the kernel has them)\n"
             "  --grace SECONDS  on SIGINT/SIGTERM, how long open connections may go on\n"
             "                   before they are closed (default 2)\n"
             "  --udp            also echo UDP datagrams on the same port, each to its sender\n"
             "  --unix PATH      also serve a Unix stream socket at PATH (@name: abstract);\n"
             "                   a stale socket file there is replaced, removed on exit\n"
             "  --threads N      serve TCP on N threads, one io_context each (0: one per CPU)\n"
             "  --reuseport      with --threads: a SO_REUSEPORT listener per thread (default)\n"
             "  --handoff        with --threads: one acceptor hands connections round-robin\n"
             "  --wait-batch N[:US]  with --threads: a sleeping loop waits for up to N\n"
             "                   completions, at most US microseconds (default 20) once one\n"
             "                   is in (io_context_options::wait_batch; default 1)\n"
             "  SIGINT/SIGTERM stop the server cleanly (exit status 0).\n",
             out);
}

bool parse_number(std::string_view s, unsigned long& out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size();
}

// --pool-options: "inc,nobundle" and the like; false on an unknown word.
bool parse_pool_options(std::string_view s, couring::buffer_pool_options& o) {
  while (!s.empty()) {
    const auto comma = s.find(',');
    const std::string_view word = s.substr(0, comma);
    if (word == "inc" || word == "noinc")
      o.incremental = word == "inc";
    else if (word == "bundle" || word == "nobundle")
      o.bundle = word == "bundle";
    else
      return false;
    s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
  }
  return true;
}

} // namespace

int main(int argc, char** argv) {
  std::string_view port_text, address = "127.0.0.1";
  unsigned long buffer_size = 0; // 0: the default for the mode
  unsigned long pool_count = 0;
  couring::buffer_pool_options pool_options;
  bool threaded = false, handoff = false;
  unsigned long threads = 0;
  couring::io_context_options context_options;
  unsigned long grace_seconds = 2;
  bool udp = false;
  std::string unix_path;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    }
    if (arg == "--udp") {
      udp = true;
    } else if (arg == "--reuseport" || arg == "--handoff") {
      handoff = arg == "--handoff";
    } else if ((arg == "--address" || arg == "--buffer" || arg == "--grace" || arg == "--unix" ||
                arg == "--pool" || arg == "--pool-options" || arg == "--threads" ||
                arg == "--wait-batch") &&
               i + 1 < argc) {
      std::string_view value = argv[++i];
      if (arg == "--threads") {
        threaded = true;
        if (!parse_number(value, threads) || threads > 1024) {
          std::cerr << "echo_server: bad --threads '" << value << "'\n";
          return 2;
        }
      } else if (arg == "--wait-batch") {
        const auto colon = value.find(':');
        unsigned long n = 0, us = 20;
        if (!parse_number(value.substr(0, colon), n) || n == 0 || n > couring::max_wait_batch ||
            (colon != std::string_view::npos &&
             (!parse_number(value.substr(colon + 1), us) || us == 0 ||
              us > static_cast<unsigned long>(couring::max_wait_batch_timeout.count())))) {
          std::cerr << "echo_server: bad --wait-batch '" << value << "' (N[:US])\n";
          return 2;
        }
        context_options.wait_batch = static_cast<unsigned>(n);
        context_options.wait_batch_timeout = std::chrono::microseconds(us);
      } else if (arg == "--pool-options") {
        if (!parse_pool_options(value, pool_options)) {
          std::cerr << "echo_server: bad --pool-options '" << value
                    << "' (inc, noinc, bundle, nobundle, comma-separated)\n";
          return 2;
        }
      } else if (arg == "--pool") {
        if (!parse_number(value, pool_count) || pool_count == 0 || pool_count > 32768) {
          std::cerr << "echo_server: bad --pool '" << value << "' (1..32768)\n";
          return 2;
        }
      } else if (arg == "--address") {
        address = value;
      } else if (arg == "--unix") {
        unix_path = value;
      } else if (arg == "--grace") {
        if (!parse_number(value, grace_seconds)) {
          std::cerr << "echo_server: bad --grace '" << value << "'\n";
          return 2;
        }
      } else if (!parse_number(value, buffer_size) || buffer_size == 0) {
        std::cerr << "echo_server: bad --buffer '" << value << "'\n";
        return 2;
      }
    } else if (port_text.empty() && !arg.starts_with("-")) {
      port_text = arg;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (buffer_size == 0)
    buffer_size = pool_count != 0 ? 4096 : 16384;
  unsigned long port = 0;
  if (port_text.empty() || !parse_number(port_text, port) || port > 65535) {
    usage(stderr);
    return 2;
  }
  auto ep = couring::endpoint::parse(std::string(address) + ":" + std::to_string(port));
  if (!ep) {
    std::cerr << "echo_server: bad address '" << address << "'\n";
    return 2;
  }

  // Thousands of connections need more than the default 1024 descriptors.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  bool pool_options_given = false;
  for (int i = 1; i < argc; ++i)
    pool_options_given |= std::string_view(argv[i]) == "--pool-options";
  if (pool_options_given && (threaded || pool_count == 0)) {
    std::cerr << "echo_server: --pool-options needs --pool, without --threads\n";
    return 2;
  }
  if (threaded && (udp || !unix_path.empty())) {
    std::cerr << "echo_server: --threads serves TCP only (no --udp, --unix)\n";
    return 2;
  }
  try {
    if (threaded)
      return run_threaded(*ep, threads, handoff, buffer_size, pool_count,
                          std::chrono::seconds(grace_seconds), context_options);
    couring::io_context ctx;
    // Blocked in this (the only) thread before anything else can start one.
    // SIGUSR1: print the loop's counters (system calls, completions) to stderr.
    couring::signal_set signals(ctx, {SIGINT, SIGTERM, SIGUSR1});
    listeners l;
    auto listener = couring::tcp_listener::bind(ctx, *ep);
    if (!listener) {
      std::cerr << "echo_server: cannot listen on " << ep->to_string() << ": "
                << listener.error().message() << '\n';
      return 1;
    }
    l.tcp = std::move(*listener);
    if (port == 0)
      std::cout << "listening on " << l.tcp.local_endpoint().to_string() << std::endl;
    if (udp) {
      // The same port as the TCP listener (the one it picked, for port 0).
      auto s = couring::udp_socket::bind(ctx, l.tcp.local_endpoint());
      if (!s) {
        std::cerr << "echo_server: cannot bind UDP " << l.tcp.local_endpoint().to_string() << ": "
                  << s.error().message() << '\n';
        return 1;
      }
      l.udp = std::move(*s);
      if (port == 0)
        std::cout << "udp on " << l.udp.local_endpoint()->to_string() << std::endl;
    }
    if (!unix_path.empty()) {
      auto u = couring::unix_listener::bind(ctx, unix_path, {.remove_stale = true});
      if (!u) {
        std::cerr << "echo_server: cannot listen on " << unix_path << ": " << u.error().message()
                  << '\n';
        return 1;
      }
      l.unix_socket = std::move(*u);
      if (port == 0)
        std::cout << "unix on " << l.unix_socket.local_endpoint().to_string() << std::endl;
    }
    std::optional<couring::buffer_pool> pool;
    if (pool_count != 0)
      pool.emplace(ctx, pool_count, buffer_size, pool_options);
    ctx.run(run_until_signal(ctx, l, buffers{buffer_size, pool ? &*pool : nullptr},
                             std::chrono::seconds(grace_seconds), signals));
  } catch (const std::exception& e) {
    std::cerr << "echo_server: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
