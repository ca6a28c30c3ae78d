// A single-threaded TCP echo server: every byte a client sends comes back,
// until the client closes. Thousands of connections on one io_context, one
// coroutine each; peers that reset or vanish only end their own coroutine.
//
//   echo_server PORT [--address ADDR] [--buffer BYTES]

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

// One connection: read what is there, send it all back, repeat. The buffer
// lives in the coroutine frame; the loop allocates nothing.
couring::task<void> echo(couring::tcp_stream stream, std::size_t buffer_size) {
  std::vector<std::byte> buf(buffer_size);
  (void)stream.set_no_delay(true);
  for (;;) {
    auto n = co_await stream.read(buf);
    if (!n || *n == 0)
      co_return; // reset, error or end of stream: the destructor closes
    if (!co_await stream.write_all(std::span(buf).first(*n)))
      co_return;
  }
}

couring::task<void> serve(couring::io_context& ctx, couring::tcp_listener& listener,
                          std::size_t buffer_size) {
  for (;;) {
    auto conn = co_await listener.accept();
    if (conn) {
      ctx.spawn(echo(std::move(*conn), buffer_size));
      continue;
    }
    if (conn.error() == std::errc::operation_canceled)
      co_return; // stopping
    // EMFILE and friends: the listener backs off by itself; keep serving.
  }
}

void usage(std::FILE* out) {
  std::fputs("usage: echo_server PORT [--address ADDR] [--buffer BYTES]\n"
             "  Echoes every byte back to each client until it closes.\n"
             "  PORT             TCP port to listen on (0: any free port, printed)\n"
             "  --address ADDR   address to listen on (default 127.0.0.1; [::1] for IPv6)\n"
             "  --buffer BYTES   read buffer per connection (default 16384)\n"
             "  SIGINT/SIGTERM stop the server cleanly.\n",
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
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    }
    if ((arg == "--address" || arg == "--buffer") && i + 1 < argc) {
      std::string_view value = argv[++i];
      if (arg == "--address") {
        address = value;
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
    running = &ctx;
    // stop() is safe in a signal handler: an atomic store and an eventfd write.
    auto on_signal = [](int) {
      running->stop();
    };
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    ctx.spawn(serve(ctx, *listener, buffer_size));
    ctx.run();
    running = nullptr;
  } catch (const std::exception& e) {
    std::cerr << "echo_server: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
