// A single-threaded TCP echo server: every byte a client sends comes back,
// until the client closes. Thousands of connections on one io_context, one
// coroutine each; peers that reset or vanish only end their own coroutine.
//
//   echo_server PORT [--address ADDR] [--buffer BYTES] [--grace SECONDS]
//
// SIGINT/SIGTERM (read through a couring::signal_set) stop it: it stops
// accepting, lets the connections still open finish within the grace period,
// closes the rest, and exits 0.

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <string_view>
#include <vector>

#include <sys/resource.h>

#include <couring/couring.hpp>

namespace {

// The open connections, so that a stop can close the ones that outlive the
// grace period. Each connection's coroutine links its own node (in its
// frame): no allocation.
struct connection_list {
  struct node {
    connection_list* list;
    couring::tcp_stream* stream;
    node* prev = nullptr;
    node* next = nullptr;
    node(connection_list& l, couring::tcp_stream& s) : list(&l), stream(&s) {
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

// One connection: read what is there, send it all back, repeat. The buffer
// lives in the coroutine frame; the loop allocates nothing.
couring::task<void> echo(couring::tcp_stream stream, std::size_t buffer_size,
                         connection_list& live) {
  connection_list::node registered(live, stream);
  std::vector<std::byte> buf(buffer_size);
  (void)stream.set_no_delay(true);
  for (;;) {
    auto n = co_await stream.read(buf);
    if (!n || *n == 0)
      co_return; // reset, error, end of stream or closed: the destructor closes
    if (!co_await stream.write_all(std::span(buf).first(*n)))
      co_return;
  }
}

couring::task<void> serve(couring::io_context& ctx, couring::tcp_listener& listener,
                          std::size_t buffer_size, connection_list& live) {
  for (;;) {
    auto conn = co_await listener.accept();
    if (conn) {
      ctx.spawn(echo(std::move(*conn), buffer_size, live));
      continue;
    }
    if (conn.error() == std::errc::operation_canceled)
      co_return; // the listener was closed: stopping
    // EMFILE and friends: the listener backs off by itself; keep serving.
  }
}

// Serves until SIGINT or SIGTERM, then stops in order.
couring::task<void> run_until_signal(couring::io_context& ctx, couring::tcp_listener& listener,
                                     std::size_t buffer_size, std::chrono::milliseconds grace,
                                     couring::signal_set& signals) {
  using namespace std::chrono_literals;
  connection_list live;
  ctx.spawn(serve(ctx, listener, buffer_size, live));
  (void)co_await signals.wait();
  listener.close(); // new connections are refused from now on
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (!live.empty() && std::chrono::steady_clock::now() < deadline)
    (void)co_await couring::sleep_for(ctx, 10ms);
  live.close_all();
  // The closed connections' coroutines end on their next turn; wait for
  // them so that every frame is gone before the context is.
  for (int i = 0; i < 1000 && !live.empty(); ++i)
    (void)co_await couring::sleep_for(ctx, 1ms);
}

void usage(std::FILE* out) {
  std::fputs("usage: echo_server PORT [--address ADDR] [--buffer BYTES] [--grace SECONDS]\n"
             "  Echoes every byte back to each client until it closes.\n"
             "  PORT             TCP port to listen on (0: any free port, printed)\n"
             "  --address ADDR   address to listen on (default 127.0.0.1; [::1] for IPv6)\n"
             "  --buffer BYTES   read buffer per connection (default 16384)\n"
             "  --grace SECONDS  on SIGINT/SIGTERM, how long open connections may go on\n"
             "                   before they are closed (default 2)\n"
             "  SIGINT/SIGTERM stop the server cleanly (exit status 0).\n",
             out);
}

bool parse_number(std::string_view s, unsigned long& out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size();
}

} // namespace

int main(int argc, char** argv) {
  std::string_view port_text, address = "127.0.0.1";
  unsigned long buffer_size = 16384;
  unsigned long grace_seconds = 2;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    }
    if ((arg == "--address" || arg == "--buffer" || arg == "--grace") && i + 1 < argc) {
      std::string_view value = argv[++i];
      if (arg == "--address") {
        address = value;
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

  try {
    couring::io_context ctx;
    // Blocked in this (the only) thread before anything else can start one.
    couring::signal_set signals(ctx, {SIGINT, SIGTERM});
    auto listener = couring::tcp_listener::bind(ctx, *ep);
    if (!listener) {
      std::cerr << "echo_server: cannot listen on " << ep->to_string() << ": "
                << listener.error().message() << '\n';
      return 1;
    }
    if (port == 0)
      std::cout << "listening on " << listener->local_endpoint().to_string() << std::endl;
    ctx.run(run_until_signal(ctx, *listener, buffer_size, std::chrono::seconds(grace_seconds),
                             signals));
  } catch (const std::exception& e) {
    std::cerr << "echo_server: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
