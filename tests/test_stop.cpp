#include <catch2/catch.hpp>

#include <chrono>
#include <stop_token>
#include <thread>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using couring::io_context;
using couring::result;
using couring::task;
using couring::tcp_listener;
using couring::tcp_stream;
using clock_type = std::chrono::steady_clock;

TEST_CASE("with_stop_token: a stop requested in the loop cancels a read") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::stop_source source;
    auto stopper = [&]() -> task<void> {
      (void)co_await couring::sleep_for(ctx, 20ms);
      source.request_stop();
    };
    ctx.spawn(stopper());
    std::byte buf[8];
    auto r = co_await couring::with_stop_token(p.server.read(buf), source.get_token());
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::operation_canceled);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("with_stop_token: a stop from another thread cancels a task deep down") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::stop_source source;
    joining_thread other([&] {
      std::this_thread::sleep_for(30ms);
      source.request_stop();
    });
    std::byte buf[8];
    const auto t0 = clock_type::now();
    auto r = co_await couring::with_stop_token(nested_read(p.server, buf, 5), source.get_token());
    other.join();
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::operation_canceled);
    CHECK(clock_type::now() - t0 < scaled(10s)); // it came, not how fast
  };
  ctx.run(body());
}

TEST_CASE("with_stop_token: an already stopped token cancels before submitting") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::stop_source source;
    source.request_stop();
    std::byte buf[8];
    // Nothing submitted means no request in the ring and no loop turn (no
    // io_uring_enter) between starting the read and getting its result.
    const auto requests_before = ctx.submitted_requests();
    const auto enters_before = ctx.enter_count();
    auto r = co_await couring::with_stop_token(p.server.read(buf), source.get_token());
    const auto requests_between = ctx.submitted_requests();
    const auto enters_between = ctx.enter_count();
    auto t = co_await couring::with_stop_token(couring::sleep_for(ctx, 10s), source.get_token());
    CHECK(r.error() == std::errc::operation_canceled);
    CHECK(t.error() == std::errc::operation_canceled);
    CHECK(requests_between == requests_before);
    CHECK(enters_between == enters_before);
    CHECK(ctx.submitted_requests() == requests_before);
    CHECK(ctx.enter_count() == enters_before);
  };
  ctx.run(body());
}

TEST_CASE("with_stop_token: without a stop the result comes through") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto p = co_await connect_pair(ctx, listener);
    std::stop_source source;
    auto w =
        co_await couring::with_stop_token(p.client.write_all(bytes("heyabc")), source.get_token());
    REQUIRE(w);
    std::byte buf[3];
    auto r = co_await couring::with_stop_token(p.server.read_exactly(buf), source.get_token());
    REQUIRE(r);
    CHECK(text(buf) == "hey");
    auto n = co_await couring::with_stop_token(nested_read(p.server, buf, 3), source.get_token());
    REQUIRE(n);
    CHECK(text(std::span(buf).first(*n)) == std::string("abc").substr(0, *n));
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}
