#pragma once

// unix_endpoint: the address of a Unix domain socket, stored as the
// sockaddr_un the kernel takes (no allocation to pass one around).
//
// Written as text, an address is either
//   - a filesystem path ("/run/app.sock", "rel/app.sock"): a socket file;
//   - "@name": a name in Linux's abstract namespace (no file; the name goes
//     away with the last socket bound to it; '@' itself is not part of it);
//   - unnamed: a socket that was never bound (a socketpair end, a client);
//     to_string() gives "(unnamed)" and nothing can be sent to it.

#include <string>
#include <string_view>

#include <sys/socket.h>
#include <sys/un.h>

#include <couring/result.hpp>

namespace couring {

class unix_endpoint {
public:
  // The unnamed address.
  unix_endpoint() noexcept;

  // A path or "@name". Empty text is std::errc::invalid_argument; a path or
  // name longer than sun_path holds (107 bytes for a path, 107 for a name)
  // is std::errc::filename_too_long; a path must not contain a NUL byte.
  static result<unix_endpoint> parse(std::string_view text);
  // From a sockaddr the kernel filled in (accept, recvmsg, getsockname).
  // A length of 0 or sizeof(sa_family_t) is the unnamed address.
  static result<unix_endpoint> from_sockaddr(const sockaddr* addr, socklen_t len);

  bool is_unnamed() const noexcept;
  bool is_abstract() const noexcept;
  // The path (filesystem), or the name without '@' (abstract); empty if unnamed.
  std::string_view name() const noexcept;
  std::string to_string() const; // the form parse() reads back

  const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&addr_); }
  socklen_t size() const noexcept { return len_; }
  int family() const noexcept { return AF_UNIX; }

  friend bool operator==(const unix_endpoint& a, const unix_endpoint& b) noexcept;

private:
  sockaddr_un addr_;
  socklen_t len_;
};

} // namespace couring
