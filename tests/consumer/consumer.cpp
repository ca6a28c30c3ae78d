// Echoes one message over loopback through couring; exits 0 when it came back.
#include <cstdio>
#include <string_view>

#include <couring/couring.hpp>

couring::task<bool> round_trip(couring::io_context& ctx) {
  auto listener = couring::tcp_listener::bind(ctx, couring::endpoint::ipv4_loopback(0)).value();
  auto client = (co_await couring::tcp_stream::connect(ctx, listener.local_endpoint())).value();
  auto server = (co_await listener.accept()).value();
  (co_await client.write_all(std::string_view("consumer"))).value();
  std::byte buf[8];
  (co_await server.read_exactly(buf)).value();
  co_return std::string_view(reinterpret_cast<const char*>(buf), 8) == "consumer";
}

int main() {
  couring::io_context ctx;
  const bool ok = ctx.run(round_trip(ctx));
  std::puts(ok ? "consumer: ok" : "consumer: mismatch");
  return ok ? 0 : 1;
}
