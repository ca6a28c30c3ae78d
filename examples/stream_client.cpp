// The seed's client, asynchronously: bind 127.0.0.1:8081, connect to
// 127.0.0.1:8080, send "hello " and "world!" as two writes, close.
//
//   stream_client [--connect ADDR:PORT] [--bind ADDR:PORT | --no-bind]

#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string_view>

#include <couring/couring.hpp>

namespace {

struct client_config {
  couring::endpoint remote = couring::endpoint::ipv4_loopback(8080);
  std::optional<couring::endpoint> local = couring::endpoint::ipv4_loopback(8081);
};

// With a fixed local port, the connection of a previous run may still be in
// TIME_WAIT for the same address pair: the kernel lets a new one reuse it only
// after a second (net.ipv4.tcp_tw_reuse). Wait that out instead of failing.
couring::task<couring::result<couring::tcp_stream>>
connect_with_retry(couring::io_context& ctx, const client_config& config) {
  for (int attempt = 0;; ++attempt) {
    auto stream =
        co_await couring::tcp_stream::connect(ctx, config.remote, {.local = config.local});
    if (stream || !config.local || attempt == 30 ||
        (stream.error() != std::errc::address_in_use &&
         stream.error() != std::errc::address_not_available))
      co_return stream;
    if (attempt == 0)
      std::cerr << "stream_client: " << config.local->to_string()
                << " is still in use by an earlier connection (TIME_WAIT); retrying\n";
    (void)co_await couring::sleep_for(ctx, std::chrono::milliseconds(100));
  }
}

couring::task<int> exchange(couring::io_context& ctx, const client_config& config) {
  auto stream = co_await connect_with_retry(ctx, config);
  if (!stream) {
    std::cerr << "stream_client: cannot connect to " << config.remote.to_string();
    if (config.local)
      std::cerr << " from " << config.local->to_string();
    std::cerr << ": " << stream.error().message() << '\n';
    co_return 1;
  }
  for (std::string_view message : {std::string_view("hello "), std::string_view("world!")}) {
    auto n = co_await stream->write(message);
    if (!n) {
      std::cerr << "stream_client: write failed: " << n.error().message() << '\n';
      co_return 1;
    }
    std::size_t written = *n;
    if (written < message.size()) {
      // A short write: send the rest too rather than lose it.
      auto rest = co_await stream->write_all(message.substr(written));
      if (!rest) {
        std::cerr << "stream_client: write failed: " << rest.error().message() << '\n';
        co_return 1;
      }
      written = message.size();
    }
    std::cout << "written bytes: " << written << std::endl;
  }
  stream->close();
  co_return 0;
}

void usage(std::FILE* out) {
  std::fputs("usage: stream_client [--connect ADDR:PORT] [--bind ADDR:PORT | --no-bind]\n"
             "  Connects, sends \"hello \" and \"world!\" as two writes, and closes.\n"
             "  --connect ADDR:PORT  server address (default 127.0.0.1:8080)\n"
             "  --bind ADDR:PORT     local address to bind first (default 127.0.0.1:8081)\n"
             "  --no-bind            let the kernel choose the local address\n",
             out);
}

} // namespace

int main(int argc, char** argv) {
  client_config config;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    }
    if (arg == "--no-bind") {
      config.local.reset();
      continue;
    }
    if (i + 1 >= argc || (arg != "--connect" && arg != "--bind")) {
      usage(stderr);
      return 2;
    }
    std::string_view value = argv[++i];
    auto ep = couring::endpoint::parse(value);
    if (!ep) {
      std::cerr << "stream_client: bad address '" << value << "' (want ADDR:PORT)\n";
      return 2;
    }
    (arg == "--connect" ? config.remote : config.local.emplace()) = *ep;
  }
  try {
    couring::io_context ctx;
    return ctx.run(exchange(ctx, config));
  } catch (const std::exception& e) {
    std::cerr << "stream_client: " << e.what() << '\n';
    return 1;
  }
}
