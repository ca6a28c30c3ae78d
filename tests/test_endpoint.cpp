#include <catch2/catch.hpp>

#include <cstring>

#include <arpa/inet.h>
#include <sys/un.h>

#include <couring/endpoint.hpp>

using couring::endpoint;

TEST_CASE("endpoint parses IPv4") {
  auto ep = endpoint::parse("127.0.0.1:8080");
  REQUIRE(ep);
  CHECK(ep->is_v4());
  CHECK(ep->port() == 8080);
  CHECK(ep->to_string() == "127.0.0.1:8080");
  CHECK(ep->size() == sizeof(sockaddr_in));
  CHECK(*ep == endpoint::ipv4_loopback(8080));
}

TEST_CASE("endpoint parses IPv6") {
  auto ep = endpoint::parse("[::1]:8080");
  REQUIRE(ep);
  CHECK(ep->is_v6());
  CHECK(ep->port() == 8080);
  CHECK(ep->to_string() == "[::1]:8080");
  CHECK(*ep == endpoint::ipv6_loopback(8080));
  auto full = endpoint::parse("[2001:db8::42]:65535");
  REQUIRE(full);
  CHECK(full->port() == 65535);
  CHECK(full->to_string() == "[2001:db8::42]:65535");
}

TEST_CASE("endpoint port bounds") {
  CHECK(endpoint::parse("0.0.0.0:0")->port() == 0);
  CHECK(endpoint::parse("1.2.3.4:65535")->port() == 65535);
  CHECK(endpoint::parse("1.2.3.4:00080")->port() == 80);
}

TEST_CASE("endpoint round-trips through to_string") {
  for (const char* s : {"10.0.0.255:1", "[fe80::1]:443", "255.255.255.255:65535"}) {
    auto ep = endpoint::parse(s);
    REQUIRE(ep);
    CHECK(ep->to_string() == s);
    CHECK(*endpoint::parse(ep->to_string()) == *ep);
  }
}

TEST_CASE("endpoint rejects malformed input") {
  const char* bad[] = {
      "",                 // empty
      ":",                // nothing at all
      "127.0.0.1",        // missing port
      "127.0.0.1:",       // empty port
      ":8080",            // missing host
      "127.0.0.1:65536",  // port too large
      "127.0.0.1:99999",  // port too large
      "127.0.0.1:123456", // too many digits
      "127.0.0.1:-1",     // negative
      "127.0.0.1:+80",    // sign
      "127.0.0.1:8o",     // letter in port
      "127.0.0.1: 80",    // space
      "256.0.0.1:80",     // octet out of range
      "1.2.3:80",         // too few octets
      "1.2.3.4.5:80",     // too many octets
      "1.2.3.a:80",       // letter in address
      "localhost:80",     // a name, not an address
      "[::1:80",          // unbalanced bracket
      "::1]:80",          // unbalanced bracket
      "[::1]80",          // missing colon after bracket
      "[::1]:",           // empty port
      "[]:80",            // empty address
      "[::g]:80",         // bad hex
      "::1:80",           // unbracketed IPv6
      "[127.0.0.1]:80",   // IPv4 in brackets
      "[::1]:80x",        // trailing junk
  };
  for (const char* s : bad) {
    INFO("input: '" << s << "'");
    auto ep = endpoint::parse(s);
    CHECK_FALSE(ep);
    CHECK(ep.error() == std::errc::invalid_argument);
  }
}

TEST_CASE("a default endpoint is unspecified") {
  endpoint ep;
  CHECK_FALSE(ep.is_v4());
  CHECK_FALSE(ep.is_v6());
  CHECK(ep.port() == 0);
  CHECK(ep.size() == 0);
}

TEST_CASE("endpoint from a sockaddr: IPv4, IPv6, a bad length, AF_UNIX") {
  sockaddr_in v4{};
  v4.sin_family = AF_INET;
  v4.sin_port = htons(8080);
  v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  auto a = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&v4), sizeof v4);
  REQUIRE(a);
  CHECK(a->is_v4());
  CHECK(a->to_string() == "127.0.0.1:8080");
  CHECK(*a == endpoint::ipv4_loopback(8080));

  sockaddr_in6 v6{};
  v6.sin6_family = AF_INET6;
  v6.sin6_port = htons(443);
  v6.sin6_addr = in6addr_loopback;
  auto b = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&v6), sizeof v6);
  REQUIRE(b);
  CHECK(b->is_v6());
  CHECK(b->to_string() == "[::1]:443");

  // Shorter than the family's sockaddr: refused, never read past the end.
  auto short4 = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&v4), sizeof v4 - 1);
  CHECK_FALSE(short4);
  auto short6 = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&v6), sizeof v4);
  CHECK_FALSE(short6);

  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::strcpy(un.sun_path, "/tmp/x");
  auto c = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&un), sizeof un);
  REQUIRE_FALSE(c);
  CHECK(c.error() == std::errc::address_family_not_supported);

  auto d = endpoint::from_sockaddr(nullptr, 0);
  REQUIRE_FALSE(d);
  CHECK(d.error() == std::errc::invalid_argument);
}
