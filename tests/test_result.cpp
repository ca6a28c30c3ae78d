#include <catch2/catch.hpp>

#include <memory>
#include <string>

#include <couring/error.hpp>
#include <couring/result.hpp>

using couring::result;

TEST_CASE("result holds a value") {
  result<int> r = 42;
  CHECK(r.has_value());
  CHECK(static_cast<bool>(r));
  CHECK(*r == 42);
  CHECK(r.value() == 42);
  CHECK(!r.error());
  CHECK(r.value_or(7) == 42);
}

TEST_CASE("result holds an error") {
  result<int> r = std::make_error_code(std::errc::connection_refused);
  CHECK_FALSE(r.has_value());
  CHECK_FALSE(static_cast<bool>(r));
  CHECK(r.error() == std::errc::connection_refused);
  CHECK(r.value_or(7) == 7);
  CHECK_THROWS_AS(r.value(), std::system_error);
  try {
    (void)r.value();
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::connection_refused);
  }
}

TEST_CASE("result converts a negative cqe res into an errno error_code") {
  result<std::size_t> r = couring::errno_code(-ECONNRESET);
  CHECK(r.error() == std::errc::connection_reset);
  CHECK(r.error().category() == std::system_category());
}

TEST_CASE("result of a move-only type") {
  result<std::unique_ptr<std::string>> r = std::make_unique<std::string>("x");
  REQUIRE(r);
  CHECK(*r->get() == "x");
  std::unique_ptr<std::string> p = std::move(r).value();
  CHECK(*p == "x");
}

TEST_CASE("result operator-> reaches members") {
  result<std::string> r = std::string("abc");
  CHECK(r->size() == 3);
}

TEST_CASE("result<void>") {
  result<void> ok;
  CHECK(ok.has_value());
  CHECK_NOTHROW(ok.value());
  result<void> bad = std::errc::timed_out;
  CHECK_FALSE(bad);
  CHECK(bad.error() == std::errc::timed_out);
  CHECK_THROWS_AS(bad.value(), std::system_error);
}

TEST_CASE("couring's own error codes have a message and category") {
  std::error_code ec = couring::error::end_of_stream;
  CHECK(ec.category().name() == std::string("couring"));
  CHECK(ec.message().find("end of stream") != std::string::npos);
  result<void> r = ec;
  CHECK(r.error() == couring::error::end_of_stream);
}
