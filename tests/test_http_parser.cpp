// examples/http/http.hpp on its own: the request parser, target decoding,
// ranges and dates, with well-formed and hostile input, no sockets.

#include <catch2/catch.hpp>

#include <string>

#include "http.hpp"

using http::parse_outcome;

namespace {

parse_outcome parse(std::string_view text, http::request& req, http::limits lim = {}) {
  return http::parse_request(text, req, lim);
}

int failure_status(std::string_view text) {
  http::request req;
  const auto r = parse(text, req);
  INFO(text);
  REQUIRE(r.state == parse_outcome::failed);
  return r.status;
}

// A literal with NULs in it, all of it.
template <std::size_t N>
std::string raw(const char (&s)[N]) {
  return std::string(s, N - 1);
}

std::string decoded(std::string_view target, http::target_status expected) {
  char out[256];
  const auto r = http::decode_target(target, out, sizeof out);
  INFO(target);
  REQUIRE(r.status == expected);
  return r.status == http::target_status::ok ? std::string(out, r.length) : std::string();
}

} // namespace

TEST_CASE("a simple GET parses, with its length and headers") {
  const std::string text = "GET /a/b.txt?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n"
                           "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nGET /next";
  http::request req;
  const auto r = parse(text, req);
  REQUIRE(r.state == parse_outcome::complete);
  CHECK(r.consumed == text.find("GET /next"));
  CHECK(req.method == http::method::get);
  CHECK(req.target == "/a/b.txt?x=1");
  CHECK(req.minor_version == 1);
  CHECK(req.keep_alive);
  CHECK(req.range == "bytes=0-1");
  CHECK(req.if_modified_since == "Sun, 06 Nov 1994 08:49:37 GMT");
  CHECK(req.content_length == 0);
}

TEST_CASE("pipelined requests parse one after another") {
  const std::string one = "HEAD /1 HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string two = "GET /2 HTTP/1.1\r\nhost: h\r\nConnection: close\r\n\r\n";
  const std::string text = one + two;
  http::request req;
  auto r = parse(text, req);
  REQUIRE(r.state == parse_outcome::complete);
  CHECK(req.method == http::method::head);
  CHECK(r.consumed == one.size());
  r = parse(std::string_view(text).substr(one.size()), req);
  REQUIRE(r.state == parse_outcome::complete);
  CHECK(r.consumed == two.size());
  CHECK(req.target == "/2");
  CHECK_FALSE(req.keep_alive);
}

TEST_CASE("every prefix of a request is incomplete, never an error") {
  const std::string text = "GET /index.html HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n";
  for (std::size_t n = 0; n < text.size(); ++n) {
    http::request req;
    INFO("prefix of " << n << " bytes");
    CHECK(parse(std::string_view(text).substr(0, n), req).state == parse_outcome::incomplete);
  }
}

TEST_CASE("bare LF line ends, leading empty lines, HTTP/1.0 keep-alive") {
  http::request req;
  auto r = parse("\r\n\nGET / HTTP/1.0\nConnection: Keep-Alive\n\n", req);
  REQUIRE(r.state == parse_outcome::complete);
  CHECK(req.minor_version == 0);
  CHECK(req.keep_alive);
  r = parse("GET / HTTP/1.0\r\n\r\n", req); // 1.0 without Host is fine, and closes
  REQUIRE(r.state == parse_outcome::complete);
  CHECK_FALSE(req.keep_alive);
  r = parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, close\r\n\r\n", req);
  REQUIRE(r.state == parse_outcome::complete);
  CHECK_FALSE(req.keep_alive);
}

TEST_CASE("other methods parse, for a 405") {
  http::request req;
  REQUIRE(parse("DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n", req).state == parse_outcome::complete);
  CHECK(req.method == http::method::other);
  CHECK(req.method_name == "DELETE");
  REQUIRE(parse("get /x HTTP/1.1\r\nHost: h\r\n\r\n", req).state == parse_outcome::complete);
  CHECK(req.method == http::method::other); // methods are case-sensitive
}

TEST_CASE("bad syntax is a 400") {
  CHECK(failure_status("GET /\r\n\r\n") == 400);                      // no version
  CHECK(failure_status("GET  / HTTP/1.1\r\nHost: h\r\n\r\n") == 400); // two spaces
  CHECK(failure_status("GET / HTTP/1.1 \r\nHost: h\r\n\r\n") == 400); // trailing space
  CHECK(failure_status("GET / HTTX/1.1\r\nHost: h\r\n\r\n") == 400);  // protocol
  CHECK(failure_status("GE(T / HTTP/1.1\r\nHost: h\r\n\r\n") == 400); // method token
  CHECK(failure_status("GET / HTTP/1.1\r\nHost h\r\n\r\n") == 400);   // no colon
  CHECK(failure_status("GET / HTTP/1.1\r\nHost : h\r\n\r\n") == 400); // space before colon
  CHECK(failure_status("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n") == 400); // obs-fold
  CHECK(failure_status("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n") == 400); // bare CR
  CHECK(failure_status(raw("GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n")) == 400);
  CHECK(failure_status(raw("GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n")) == 400);
  CHECK(failure_status("GET / HTTP/1.1\r\n\r\n") == 400);                       // no Host
  CHECK(failure_status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400); // two Hosts
  CHECK(failure_status("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n") == 400);
  CHECK(failure_status(
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n") == 400);
  CHECK(failure_status(
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") == 400);
  CHECK(failure_status("\r\x01") == 400);
  CHECK(failure_status(raw("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")) == 400); // TLS
}

TEST_CASE("other versions and transfer codings") {
  CHECK(failure_status("GET / HTTP/2.0\r\nHost: h\r\n\r\n") == 505);
  CHECK(failure_status("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n") == 501);
  http::request req;
  REQUIRE(parse("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", req).state ==
          parse_outcome::complete);
  CHECK(req.content_length == 5);
}

TEST_CASE("an oversized request line is a 414, oversized headers a 431, without the end") {
  const http::limits lim{}; // 8 KiB each
  http::request req;
  const std::string long_target = "GET /" + std::string(9000, 'a');
  // Incomplete, but already past the limit: no need to wait for the rest.
  auto r = parse(long_target, req, lim);
  REQUIRE(r.state == parse_outcome::failed);
  CHECK(r.status == 414);
  r = parse(long_target + " HTTP/1.1\r\nHost: h\r\n\r\n", req, lim);
  REQUIRE(r.state == parse_outcome::failed);
  CHECK(r.status == 414);
  const std::string big_header = "GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + std::string(9000, 'b');
  r = parse(big_header, req, lim);
  REQUIRE(r.state == parse_outcome::failed);
  CHECK(r.status == 431);
  r = parse(big_header + "\r\n\r\n", req, lim);
  REQUIRE(r.state == parse_outcome::failed);
  CHECK(r.status == 431);
  // Many small headers add up too.
  std::string many = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < 1000; ++i)
    many += "X-" + std::to_string(i) + ": v\r\n";
  r = parse(many, req, lim);
  REQUIRE(r.state == parse_outcome::failed);
  CHECK(r.status == 431);
  // Endless empty lines before a request.
  r = parse(std::string(20000, '\n'), req, lim);
  REQUIRE(r.state == parse_outcome::failed);
  CHECK(r.status == 400);
  // Just under the limits: fine.
  const std::string fits = "GET /" + std::string(8000, 'a') + " HTTP/1.1\r\nHost: h\r\n\r\n";
  CHECK(parse(fits, req, lim).state == parse_outcome::complete);
}

TEST_CASE("targets decode to paths below the root") {
  using http::target_status;
  CHECK(decoded("/", target_status::ok).empty());
  CHECK(decoded("/a/b.txt", target_status::ok) == "a/b.txt");
  CHECK(decoded("//a///./b/.", target_status::ok) == "a/b");
  CHECK(decoded("/a%20b%2Fc?q=../../x#f", target_status::ok) == "a b/c");
  CHECK(decoded("http://example.com/x/y", target_status::ok) == "x/y");
  CHECK(decoded("http://example.com", target_status::ok).empty());
  CHECK(decoded("/..", target_status::forbidden).empty());
  CHECK(decoded("/../etc/passwd", target_status::forbidden).empty());
  CHECK(decoded("/a/../../etc/passwd", target_status::forbidden).empty());
  CHECK(decoded("/%2e%2e/etc/passwd", target_status::forbidden).empty());
  CHECK(decoded("/%2E%2e%2fetc", target_status::forbidden).empty());
  CHECK(decoded("/a%2f..%2f..%2fb", target_status::forbidden).empty());
  CHECK(decoded("/a.txt%00.html", target_status::forbidden).empty());
  CHECK(decoded("/%zz", target_status::bad_request).empty());
  CHECK(decoded("/%4", target_status::bad_request).empty());
  CHECK(decoded("/%", target_status::bad_request).empty());
  CHECK(decoded("*", target_status::bad_request).empty());
  CHECK(decoded("a/b", target_status::bad_request).empty());
  // "..." and "..x" are ordinary names.
  CHECK(decoded("/.../..x", target_status::ok) == ".../..x");
  char small[8];
  CHECK(http::decode_target("/0123456789", small, sizeof small).status ==
        target_status::bad_request);
  char out[32];
  CHECK(http::decode_target("/dir/", out, sizeof out).trailing_slash);
  CHECK_FALSE(http::decode_target("/dir", out, sizeof out).trailing_slash);
}

TEST_CASE("single byte ranges") {
  using http::byte_range;
  auto r = http::parse_range("bytes=0-9", 100);
  CHECK((r.state == byte_range::satisfiable && r.first == 0 && r.last == 9));
  r = http::parse_range("bytes=90-", 100);
  CHECK((r.state == byte_range::satisfiable && r.first == 90 && r.last == 99));
  r = http::parse_range("bytes=90-1000", 100); // the end is clamped
  CHECK((r.state == byte_range::satisfiable && r.first == 90 && r.last == 99));
  r = http::parse_range("bytes=-10", 100);
  CHECK((r.state == byte_range::satisfiable && r.first == 90 && r.last == 99));
  r = http::parse_range("bytes=-1000", 100);
  CHECK((r.state == byte_range::satisfiable && r.first == 0 && r.last == 99));
  CHECK(http::parse_range("bytes=100-", 100).state == byte_range::unsatisfiable);
  CHECK(http::parse_range("bytes=-0", 100).state == byte_range::unsatisfiable);
  CHECK(http::parse_range("bytes=0-", 0).state == byte_range::unsatisfiable);
  // Ignored (the whole file is sent): bad syntax, other units, several ranges.
  CHECK(http::parse_range("bytes=5-1", 100).state == byte_range::none);
  CHECK(http::parse_range("bytes=a-b", 100).state == byte_range::none);
  CHECK(http::parse_range("items=0-1", 100).state == byte_range::none);
  CHECK(http::parse_range("bytes=0-1,5-6", 100).state == byte_range::none);
  CHECK(http::parse_range("bytes=", 100).state == byte_range::none);
  CHECK(http::parse_range("bytes=99999999999999999999-", 100).state == byte_range::none);
}

TEST_CASE("HTTP dates round-trip; other forms are not dates") {
  char text[30];
  http::format_http_date(784111777, text);
  CHECK(std::string_view(text, 29) == "Sun, 06 Nov 1994 08:49:37 GMT");
  CHECK(http::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777);
  http::format_http_date(0, text);
  CHECK(http::parse_http_date(std::string_view(text, 29)) == 0);
  CHECK_FALSE(http::parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"));
  CHECK_FALSE(http::parse_http_date("Sun Nov  6 08:49:37 1994"));
  CHECK_FALSE(http::parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"));
  CHECK_FALSE(http::parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"));
  CHECK_FALSE(http::parse_http_date("Sun, 0x Nov 1994 08:49:37 GMT"));
  CHECK_FALSE(http::parse_http_date(""));
}

TEST_CASE("content types by extension") {
  CHECK(http::content_type("index.html") == "text/html; charset=utf-8");
  CHECK(http::content_type("a/b/STYLE.CSS") == "text/css; charset=utf-8");
  CHECK(http::content_type("x.png") == "image/png");
  CHECK(http::content_type("noext") == "application/octet-stream");
  CHECK(http::content_type("dir.html/file") == "application/octet-stream");
  CHECK(http::content_type("trailing.") == "application/octet-stream");
}
