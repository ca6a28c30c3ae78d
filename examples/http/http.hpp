#pragma once

// The HTTP/1.1 pieces of examples/http_file_server that need no socket: the
// request-head parser, the request target to a path below the root, byte
// ranges, HTTP dates and content types. Header-only, no allocation: every
// result points into the caller's buffers. Unit-tested on its own
// (tests/test_http_parser.cpp), so hostile input is checked without sockets.
//
// The parser is strict where leniency would let two parsers disagree about
// where a request ends (request smuggling): no whitespace before a header's
// colon, no folded lines, no bare CR, no control characters, one
// Content-Length value, no Transfer-Encoding (this server takes no bodies).
// Lines may end in CRLF or a bare LF (RFC 9112 2.2 lets a recipient accept it).

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <optional>
#include <string_view>

namespace http {

struct limits {
  std::size_t max_request_line = 8192; // longer: 414 URI Too Long
  std::size_t max_head = 8192;         // request line + headers; longer: 431
};

enum class method { get, head, other };

struct request {
  std::string_view method_name;
  http::method method = method::other;
  std::string_view target; // as sent (still percent-encoded)
  int minor_version = 1;   // HTTP/1.<minor>
  bool keep_alive = true;
  std::string_view if_modified_since; // empty when absent
  std::string_view range;             // empty when absent
  std::uint64_t content_length = 0;   // body bytes that follow the head
};

struct parse_outcome {
  enum kind { incomplete, complete, failed } state = incomplete;
  std::size_t consumed = 0; // complete: length of the head, blank line included
  int status = 0;           // failed: the status to answer with (400, 414, 431, 501, 505)
};

namespace detail {

inline bool is_tchar(unsigned char c) noexcept {
  if (c >= '0' && c <= '9')
    return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
    return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

inline bool is_token(std::string_view s) noexcept {
  return !s.empty() && std::all_of(s.begin(), s.end(),
                                   [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z')
      x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z')
      y = static_cast<char>(y + 32);
    if (x != y)
      return false;
  }
  return true;
}

inline std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// Does the comma-separated list (Connection: keep-alive, Upgrade) hold token?
inline bool list_contains(std::string_view list, std::string_view token) noexcept {
  while (!list.empty()) {
    const auto comma = list.find(',');
    if (iequals(trim_ows(list.substr(0, comma)), token))
      return true;
    if (comma == std::string_view::npos)
      break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

inline bool parse_decimal(std::string_view s, std::uint64_t& out) noexcept {
  if (s.empty() || s.size() > 19)
    return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size();
}

} // namespace detail

// Parses the request head at the start of buf. incomplete: more bytes are
// needed (the limits are checked already, so a caller that reads until this
// says otherwise never holds more than max_head + one read). complete: req
// points into buf. failed: answer status and close the connection.
inline parse_outcome parse_request(std::string_view buf, request& req, const limits& lim = {}) {
  using detail::iequals;
  const auto fail = [](int status) {
    return parse_outcome{parse_outcome::failed, 0, status};
  };
  // Empty lines before a request are ignored (RFC 9112 2.2), within the limit.
  std::size_t start = 0;
  while (start < buf.size() && (buf[start] == '\r' || buf[start] == '\n')) {
    if (buf[start] == '\r' && (start + 1 >= buf.size() || buf[start + 1] != '\n'))
      return start + 1 >= buf.size() ? parse_outcome{} : fail(400);
    start += buf[start] == '\r' ? 2 : 1;
    if (start > lim.max_head)
      return fail(400);
  }
  std::string_view rest = buf.substr(start);

  // --- request line ---------------------------------------------------------
  const auto eol = rest.find('\n');
  if (eol == std::string_view::npos)
    return rest.size() > lim.max_request_line ? fail(414) : parse_outcome{};
  std::string_view line = rest.substr(0, eol);
  if (!line.empty() && line.back() == '\r')
    line.remove_suffix(1);
  if (line.size() > lim.max_request_line)
    return fail(414);
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return fail(400);
  req = request{};
  req.method_name = line.substr(0, sp1);
  req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!detail::is_token(req.method_name) || req.target.empty())
    return fail(400);
  for (char c : req.target)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f)
      return fail(400);
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' ||
      version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9')
    return fail(400);
  if (version[5] != '1')
    return fail(505);
  req.minor_version = version[7] - '0';
  if (req.method_name == "GET")
    req.method = method::get;
  else if (req.method_name == "HEAD")
    req.method = method::head;

  // --- header fields --------------------------------------------------------
  std::size_t pos = eol + 1;
  bool host = false, content_length = false;
  std::string_view connection;
  for (;;) {
    const auto next = rest.find('\n', pos);
    if (next == std::string_view::npos)
      return start + rest.size() > lim.max_head ? fail(431) : parse_outcome{};
    if (start + next + 1 > lim.max_head)
      return fail(431);
    std::string_view field = rest.substr(pos, next - pos);
    pos = next + 1;
    if (!field.empty() && field.back() == '\r')
      field.remove_suffix(1);
    if (field.empty())
      break;
    if (field.front() == ' ' || field.front() == '\t')
      return fail(400); // obsolete line folding
    const auto colon = field.find(':');
    if (colon == std::string_view::npos || !detail::is_token(field.substr(0, colon)))
      return fail(400); // includes whitespace before the colon
    const std::string_view name = field.substr(0, colon);
    const std::string_view value = detail::trim_ows(field.substr(colon + 1));
    for (char ch : value) {
      const auto c = static_cast<unsigned char>(ch);
      if ((c < 0x20 && c != '\t') || c == 0x7f)
        return fail(400); // NUL, bare CR, other controls
    }
    if (iequals(name, "host")) {
      if (host)
        return fail(400);
      host = true;
    } else if (iequals(name, "connection")) {
      connection = value;
    } else if (iequals(name, "if-modified-since")) {
      req.if_modified_since = value;
    } else if (iequals(name, "range")) {
      req.range = value;
    } else if (iequals(name, "content-length")) {
      std::uint64_t n = 0;
      if (!detail::parse_decimal(value, n) || (content_length && n != req.content_length))
        return fail(400);
      content_length = true;
      req.content_length = n;
    } else if (iequals(name, "transfer-encoding")) {
      return fail(501); // no request bodies here, least of all chunked ones
    }
  }
  if (req.minor_version >= 1 && !host)
    return fail(400); // RFC 9112 3.2: a 1.1 request without Host is a 400
  if (req.minor_version == 0)
    req.keep_alive = detail::list_contains(connection, "keep-alive");
  else
    req.keep_alive = !detail::list_contains(connection, "close");
  return {parse_outcome::complete, start + pos, 0};
}

// --- request target -> relative path -----------------------------------------

enum class target_status { ok, bad_request, forbidden };

struct target_path {
  target_status status = target_status::ok;
  std::size_t length = 0;      // of the relative path written (no leading '/')
  bool trailing_slash = false; // the target names a directory
};

// Turns an origin-form ("/a/b?q") or absolute-form ("http://host/a/b")
// target into a path relative to the root, written to out (NUL-terminated):
// the query is dropped, %XX decoded, empty and "." segments dropped. A ".."
// segment (however encoded), an encoded NUL, or anything that is not a path
// is refused, so the result never names anything above the root lexically;
// symlinks are the opener's business (openat2 RESOLVE_BENEATH).
inline target_path decode_target(std::string_view target, char* out, std::size_t out_size) {
  target_path r;
  if (target.size() > 7 && detail::iequals(target.substr(0, 7), "http://")) {
    const auto slash = target.find('/', 7);
    target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
  }
  if (target.empty() || target.front() != '/') {
    r.status = target_status::bad_request;
    return r;
  }
  target = target.substr(0, target.find_first_of("?#"));
  const auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9')
      return c - '0';
    c = static_cast<char>(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  // Decode first, then split on the decoded '/': "%2e%2e%2f" is as much a
  // traversal as "../".
  std::size_t n = 0;
  for (std::size_t i = 0; i < target.size(); ++i) {
    char c = target[i];
    if (c == '%') {
      if (i + 2 >= target.size()) {
        r.status = target_status::bad_request;
        return r;
      }
      const int hi = hex(target[i + 1]), lo = hex(target[i + 2]);
      if (hi < 0 || lo < 0) {
        r.status = target_status::bad_request;
        return r;
      }
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
      if (c == '\0') {
        r.status = target_status::forbidden;
        return r;
      }
    }
    if (n + 1 >= out_size) {
      r.status = target_status::bad_request;
      return r;
    }
    out[n++] = c;
  }
  r.trailing_slash = n > 0 && out[n - 1] == '/';
  // Normalise in place: segments are only ever dropped, so the write
  // position never overtakes the read position.
  std::size_t w = 0, i = 0;
  while (i < n) {
    std::size_t j = i;
    while (j < n && out[j] != '/')
      ++j;
    const std::string_view seg(out + i, j - i);
    if (seg == "..") {
      r.status = target_status::forbidden;
      return r;
    }
    if (!seg.empty() && seg != ".") {
      if (w > 0)
        out[w++] = '/';
      std::memmove(out + w, out + i, seg.size());
      w += seg.size();
    }
    i = j + 1;
  }
  out[w] = '\0';
  r.length = w;
  return r;
}

// --- Range ------------------------------------------------------------------

struct byte_range {
  enum kind { none, satisfiable, unsatisfiable } state = none;
  std::uint64_t first = 0, last = 0; // inclusive, when satisfiable
};

// One "bytes=a-b", "bytes=a-" or "bytes=-n" range of a representation of
// size bytes. none: ignore the header and send it all (a syntax error, an
// other unit, or several ranges -- RFC 9110 14.2 lets a server ignore Range).
inline byte_range parse_range(std::string_view header, std::uint64_t size) {
  byte_range r;
  if (header.size() < 6 || !detail::iequals(header.substr(0, 6), "bytes="))
    return r;
  std::string_view spec = detail::trim_ows(header.substr(6));
  if (spec.find(',') != std::string_view::npos)
    return r;
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos)
    return r;
  const std::string_view a = detail::trim_ows(spec.substr(0, dash));
  const std::string_view b = detail::trim_ows(spec.substr(dash + 1));
  std::uint64_t x = 0, y = 0;
  if (a.empty()) { // suffix: the last y bytes
    if (!detail::parse_decimal(b, y))
      return r;
    if (y == 0 || size == 0) {
      r.state = byte_range::unsatisfiable;
      return r;
    }
    r.state = byte_range::satisfiable;
    r.first = y >= size ? 0 : size - y;
    r.last = size - 1;
    return r;
  }
  if (!detail::parse_decimal(a, x))
    return r;
  if (b.empty()) {
    y = UINT64_MAX;
  } else if (!detail::parse_decimal(b, y) || y < x) {
    return r; // invalid: ignored
  }
  if (x >= size) {
    r.state = byte_range::unsatisfiable;
    return r;
  }
  r.state = byte_range::satisfiable;
  r.first = x;
  r.last = std::min(y, size - 1);
  return r;
}

// --- dates ------------------------------------------------------------------

// IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT": 29 characters (+ NUL in out).
inline void format_http_date(std::time_t t, char (&out)[30]) noexcept {
  std::tm tm{};
  gmtime_r(&t, &tm);
  static constexpr char days[] = "SunMonTueWedThuFriSat";
  static constexpr char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  const auto two = [](char* p, int v) {
    p[0] = static_cast<char>('0' + v / 10);
    p[1] = static_cast<char>('0' + v % 10);
  };
  std::memcpy(out, days + 3 * tm.tm_wday, 3);
  out[3] = ',';
  out[4] = ' ';
  two(out + 5, tm.tm_mday);
  out[7] = ' ';
  std::memcpy(out + 8, months + 3 * tm.tm_mon, 3);
  out[11] = ' ';
  const int year = tm.tm_year + 1900;
  two(out + 12, (year / 100) % 100);
  two(out + 14, year % 100);
  out[16] = ' ';
  two(out + 17, tm.tm_hour);
  out[19] = ':';
  two(out + 20, tm.tm_min);
  out[22] = ':';
  two(out + 23, tm.tm_sec);
  std::memcpy(out + 25, " GMT", 5);
}

// An IMF-fixdate as seconds since the epoch; nullopt for anything else (the
// obsolete RFC 850 and asctime forms included: If-Modified-Since is then
// ignored, which is always safe).
inline std::optional<std::time_t> parse_http_date(std::string_view s) noexcept {
  if (s.size() != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
      s[19] != ':' || s[22] != ':' || s.substr(25) != " GMT")
    return std::nullopt;
  const auto num = [&](std::size_t pos, std::size_t len, int& v) {
    v = 0;
    for (std::size_t i = pos; i < pos + len; ++i) {
      if (s[i] < '0' || s[i] > '9')
        return false;
      v = v * 10 + (s[i] - '0');
    }
    return true;
  };
  static constexpr std::string_view months = "JanFebMarAprMayJunJulAugSepOctNovDec";
  const auto m = months.find(s.substr(8, 3));
  if (m == std::string_view::npos || m % 3 != 0)
    return std::nullopt;
  int day, year, hour, minute, second;
  if (!num(5, 2, day) || !num(12, 4, year) || !num(17, 2, hour) || !num(20, 2, minute) ||
      !num(23, 2, second))
    return std::nullopt;
  if (day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60 || year < 1970)
    return std::nullopt;
  std::tm tm{};
  tm.tm_mday = day;
  tm.tm_mon = static_cast<int>(m / 3);
  tm.tm_year = year - 1900;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  return timegm(&tm);
}

// --- content types ----------------------------------------------------------

inline std::string_view content_type(std::string_view path) noexcept {
  struct entry {
    std::string_view ext, type;
  };
  static constexpr entry table[] = {
      {"html", "text/html; charset=utf-8"},
      {"htm", "text/html; charset=utf-8"},
      {"css", "text/css; charset=utf-8"},
      {"js", "text/javascript; charset=utf-8"},
      {"mjs", "text/javascript; charset=utf-8"},
      {"json", "application/json"},
      {"txt", "text/plain; charset=utf-8"},
      {"md", "text/markdown; charset=utf-8"},
      {"xml", "application/xml"},
      {"svg", "image/svg+xml"},
      {"png", "image/png"},
      {"jpg", "image/jpeg"},
      {"jpeg", "image/jpeg"},
      {"gif", "image/gif"},
      {"webp", "image/webp"},
      {"ico", "image/vnd.microsoft.icon"},
      {"pdf", "application/pdf"},
      {"wasm", "application/wasm"},
      {"woff", "font/woff"},
      {"woff2", "font/woff2"},
      {"mp4", "video/mp4"},
      {"webm", "video/webm"},
      {"mp3", "audio/mpeg"},
      {"zip", "application/zip"},
      {"gz", "application/gzip"},
      {"tar", "application/x-tar"},
  };
  const auto slash = path.rfind('/');
  const auto name = slash == std::string_view::npos ? path : path.substr(slash + 1);
  const auto dot = name.rfind('.');
  if (dot != std::string_view::npos && dot + 1 < name.size()) {
    const auto ext = name.substr(dot + 1);
    for (const auto& e : table)
      if (detail::iequals(ext, e.ext))
        return e.type;
  }
  return "application/octet-stream";
}

inline std::string_view reason_phrase(int status) noexcept {
  switch (status) {
  case 200:
    return "OK";
  case 206:
    return "Partial Content";
  case 304:
    return "Not Modified";
  case 400:
    return "Bad Request";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 414:
    return "URI Too Long";
  case 416:
    return "Range Not Satisfiable";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 503:
    return "Service Unavailable";
  case 505:
    return "HTTP Version Not Supported";
  default:
    return "Unknown";
  }
}

} // namespace http
