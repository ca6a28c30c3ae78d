#pragma once

// resolve: host names to endpoints, without a thread and without a blocking
// getaddrinfo. c-ares does the DNS work; couring's own ring watches its
// sockets (one-shot IORING_OP_POLL_ADD requests) and its retry deadlines (an
// IORING_OP_TIMEOUT). Each io_context has one resolver, made on first use.
//
// /etc/hosts is read first (localhost resolves with no network), then the
// name servers of /etc/resolv.conf -- or those given to configure_resolver.
// Failures are values in the "couring.resolve" category (resolve_error);
// a cancelled resolution (with_timeout, with_stop_token, when_any) ends with
// operation_canceled (timed_out under with_timeout) and leaves no request or
// socket behind.

#include <chrono>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <sys/socket.h>

#include <couring/endpoint.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/task.hpp>

namespace couring {

enum class resolve_error {
  no_such_name = 1, // the name does not exist (NXDOMAIN, and not in /etc/hosts)
  no_address,       // the name exists but has no address of the family asked for
  server_failure,   // the name server failed (SERVFAIL)
  refused,          // the name server refused the query
  timed_out,        // no name server answered in time (after c-ares' retries)
  bad_name,         // not a valid host name, or "host:port" malformed
  bad_response,     // an answer that could not be parsed
  unreachable,      // no name server could be contacted
  unknown_service,  // the service is neither a port number nor a known name
  not_supported,    // an address family or query the resolver does not do
  no_memory,
  configuration, // resolver set-up failed (resolv.conf, a bad server list)
  shut_down,     // the io_context was destroyed with the resolution pending
  other,
};

const std::error_category& resolve_category() noexcept;

inline std::error_code make_error_code(resolve_error e) noexcept {
  return {static_cast<int>(e), resolve_category()};
}

struct resolver_options {
  // Name servers, comma-separated: "127.0.0.1", "127.0.0.1:5353",
  // "[::1]:53". Empty: those of /etc/resolv.conf.
  std::string servers;
  // Wait for an answer before the first retry (c-ares doubles it per round);
  // zero: resolv.conf's or c-ares' default (5 s).
  std::chrono::milliseconds timeout{0};
  int tries = 0;              // attempts per server; 0: the default (4)
  bool hosts_file = true;     // look in /etc/hosts before asking the servers
  bool search_domains = true; // resolv.conf's search list for short names
};

// Replaces ctx's resolver configuration; resolutions started from now on use
// it. Fails with std::errc::device_or_resource_busy while a resolution is
// pending, and with a resolve_error when c-ares rejects the options.
result<void> configure_resolver(io_context& ctx, resolver_options options);

// The addresses of host (a name, or a numeric IPv4/IPv6 address) with port
// service (a number or a name from /etc/services), best first (RFC 6724
// order). family is AF_UNSPEC, AF_INET or AF_INET6.
task<result<std::vector<endpoint>>> resolve(io_context& ctx, std::string_view host,
                                            std::string_view service, int family = AF_UNSPEC);

// Splits "host:port" / "[v6]:port" into its parts (no resolution): bad_name
// when the text is not of that form.
result<std::pair<std::string, std::string>> split_host_port(std::string_view text);

} // namespace couring

template <>
struct std::is_error_code_enum<couring::resolve_error> : std::true_type {};
