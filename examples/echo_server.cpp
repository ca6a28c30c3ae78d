// A single-threaded echo server: every byte a client sends comes back, until
// the client closes. Thousands of connections on one io_context, one
// coroutine each; peers that reset or vanish only end their own coroutine.
// The same echo code serves TCP and Unix socket connections (it takes a
// couring::stream&); with --udp, datagrams sent to the port come back to
// their sender too.
//
//   echo_server PORT [--address ADDR] [--buffer BYTES] [--udp] [--unix PATH]

#include <algorithm>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <string_view>
#include <vector>

#include <sys/resource.h>

#include <couring/couring.hpp>

namespace {

couring::io_context* running = nullptr;

// One connection, whatever kind of stream it is: read what is there, send it
// all back, repeat. The buffer is allocated once; the loop allocates nothing.
couring::task<void> echo(couring::stream& stream, std::size_t buffer_size) {
  std::vector<std::byte> buf(buffer_size);
  for (;;) {
    auto n = co_await stream.read(buf);
    if (!n || *n == 0)
      co_return; // reset, error or end of stream: the destructor closes
    if (!co_await stream.write_all(std::span(buf).first(*n)))
      co_return;
  }
}

// Each connection's coroutine owns its stream and hands it to echo().
couring::task<void> connection(couring::tcp_stream stream, std::size_t buffer_size) {
  (void)stream.set_no_delay(true);
  co_await echo(stream, buffer_size);
}
couring::task<void> connection(couring::unix_stream stream, std::size_t buffer_size) {
  co_await echo(stream, buffer_size);
}

// Accepts on any listener (tcp_listener, unix_listener) until it is closed.
template <class Listener>
couring::task<void> serve(couring::io_context& ctx, Listener& listener, std::size_t buffer_size) {
  for (;;) {
    auto conn = co_await listener.accept();
    if (conn) {
      ctx.spawn(connection(std::move(*conn), buffer_size));
      continue;
    }
    if (conn.error() == std::errc::operation_canceled)
      co_return; // stopping
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

void usage(std::FILE* out) {
  std::fputs("usage: echo_server PORT [--address ADDR] [--buffer BYTES] [--udp] [--unix PATH]\n"
             "  Echoes every byte back to each client until it closes.\n"
             "  PORT             TCP port to listen on (0: any free port, printed)\n"
             "  --address ADDR   address to listen on (default 127.0.0.1; [::1] for IPv6)\n"
             "  --buffer BYTES   read buffer per connection (default 16384)\n"
             "  --udp            also echo UDP datagrams on the same port, each to its sender\n"
             "  --unix PATH      also serve a Unix stream socket at PATH (@name: abstract);\n"
             "                   a stale socket file there is replaced, removed on exit\n"
             "  SIGINT/SIGTERM stop the server cleanly.\n",
             out);
}

bool parse_number(std::string_view s, unsigned long& out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size();
}

} // namespace

int main(int argc, char** argv) {
  std::string_view port_text, address = "127.0.0.1", unix_path;
  unsigned long buffer_size = 16384;
  bool udp = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    }
    if (arg == "--udp") {
      udp = true;
    } else if ((arg == "--address" || arg == "--buffer" || arg == "--unix") && i + 1 < argc) {
      std::string_view value = argv[++i];
      if (arg == "--address") {
        address = value;
      } else if (arg == "--unix") {
        unix_path = value;
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
    auto listener = couring::tcp_listener::bind(ctx, *ep);
    if (!listener) {
      std::cerr << "echo_server: cannot listen on " << ep->to_string() << ": "
                << listener.error().message() << '\n';
      return 1;
    }
    if (port == 0)
      std::cout << "listening on " << listener->local_endpoint().to_string() << std::endl;
    couring::udp_socket datagrams;
    if (udp) {
      // The same port as the TCP listener (the one it picked, for port 0).
      auto s = couring::udp_socket::bind(ctx, listener->local_endpoint());
      if (!s) {
        std::cerr << "echo_server: cannot bind UDP " << listener->local_endpoint().to_string()
                  << ": " << s.error().message() << '\n';
        return 1;
      }
      datagrams = std::move(*s);
      if (port == 0)
        std::cout << "udp on " << datagrams.local_endpoint()->to_string() << std::endl;
    }
    couring::unix_listener unix_listener;
    if (!unix_path.empty()) {
      auto l = couring::unix_listener::bind(ctx, unix_path, {.remove_stale = true});
      if (!l) {
        std::cerr << "echo_server: cannot listen on " << unix_path << ": " << l.error().message()
                  << '\n';
        return 1;
      }
      unix_listener = std::move(*l);
      if (port == 0)
        std::cout << "unix on " << unix_listener.local_endpoint().to_string() << std::endl;
    }
    running = &ctx;
    // stop() is safe in a signal handler: an atomic store and an eventfd write.
    auto on_signal = [](int) {
      running->stop();
    };
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    ctx.spawn(serve(ctx, *listener, buffer_size));
    if (udp)
      ctx.spawn(serve_datagrams(datagrams, buffer_size));
    if (unix_listener.is_open())
      ctx.spawn(serve(ctx, unix_listener, buffer_size));
    ctx.run();
    running = nullptr;
  } catch (const std::exception& e) {
    std::cerr << "echo_server: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
