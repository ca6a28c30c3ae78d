// The seed's server, asynchronously: listen, accept one connection, read it
// in 4-byte chunks until end of stream, print each chunk and the total.
//
//   stream_server [--listen ADDR:PORT] [--backlog N]

#include <charconv>
#include <cstdio>
#include <iostream>
#include <string>
#include <string_view>

#include <couring/couring.hpp>

namespace {

struct server_config {
  couring::endpoint listen = couring::endpoint::ipv4_loopback(8080);
  int backlog = 1;
};

couring::task<int> serve(couring::io_context& ctx, const server_config& config) {
  auto listener = couring::tcp_listener::bind(ctx, config.listen, {.backlog = config.backlog});
  if (!listener) {
    std::cerr << "stream_server: cannot listen on " << config.listen.to_string() << ": "
              << listener.error().message() << '\n';
    co_return 1;
  }
  auto conn = co_await listener->accept();
  if (!conn) {
    std::cerr << "stream_server: accept failed: " << conn.error().message() << '\n';
    co_return 1;
  }
  listener->close(); // one connection, as in the seed

  std::byte buf[4];
  std::size_t total = 0;
  for (;;) {
    auto n = co_await conn->read(buf);
    if (!n) {
      std::cerr << "stream_server: read failed: " << n.error().message() << '\n';
      co_return 1;
    }
    if (*n == 0)
      break; // end of stream
    std::cout << std::string_view(reinterpret_cast<const char*>(buf), *n) << std::endl;
    total += *n;
  }
  std::cout << "\nTotal size: " << total << std::endl;
  co_return 0;
}

void usage(std::FILE* out) {
  std::fputs("usage: stream_server [--listen ADDR:PORT] [--backlog N]\n"
             "  Accepts one TCP connection, prints what it receives in 4-byte chunks\n"
             "  and the total byte count, then exits.\n"
             "  --listen ADDR:PORT  address to listen on (default 127.0.0.1:8080;\n"
             "                      IPv6 as [::1]:8080)\n"
             "  --backlog N         listen backlog (default 1)\n",
             out);
}

} // namespace

int main(int argc, char** argv) {
  server_config config;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      usage(stderr);
      return 2;
    }
    std::string_view value = argv[++i];
    if (arg == "--listen") {
      auto ep = couring::endpoint::parse(value);
      if (!ep) {
        std::cerr << "stream_server: bad address '" << value << "' (want ADDR:PORT)\n";
        return 2;
      }
      config.listen = *ep;
    } else if (arg == "--backlog") {
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), config.backlog);
      if (ec != std::errc{} || end != value.data() + value.size() || config.backlog < 0) {
        std::cerr << "stream_server: bad backlog '" << value << "'\n";
        return 2;
      }
    } else {
      usage(stderr);
      return 2;
    }
  }
  try {
    couring::io_context ctx;
    return ctx.run(serve(ctx, config));
  } catch (const std::exception& e) {
    std::cerr << "stream_server: " << e.what() << '\n';
    return 1;
  }
}
