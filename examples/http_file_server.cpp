// A static-file HTTP/1.1 server on one io_context (or one per thread with
// --threads N): GET and HEAD, keep-alive
// and pipelining, Last-Modified / If-Modified-Since, single byte ranges, and
// bodies sent with couring::send_file (small ones read into the response
// buffer and sent with the head in one write). One coroutine per
// connection; the request parser is examples/http/http.hpp.
//
//   http_file_server --root DIR [--listen ADDR:PORT] [options]   (see usage())
//
// Nothing outside DIR is ever served: request targets are decoded and
// refused if any segment is "..", and every file is opened with openat2
// (IORING_OP_OPENAT2) relative to DIR with RESOLVE_BENEATH, so a symlink
// that leads out of DIR (absolute, or through "..") fails with EXDEV (403).
//
// Hostile clients get a status or a closed connection, never unbounded
// memory: the request head is limited to 8 KiB (431, or 414 for the request
// line), a request must arrive completely within the idle timeout (a
// slowloris trickle is dropped), a response that makes no progress within
// the write timeout is dropped, and past --max-connections a new connection
// gets a 503 and is closed.
//
// SIGINT/SIGTERM: stop accepting, close idle keep-alive connections, let the
// requests in flight finish within the grace period, close the rest, exit 0.

#include <atomic>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "http/http.hpp"

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

struct options {
  std::string root;
  std::string listen = "127.0.0.1:8080";
  std::chrono::milliseconds idle_timeout = 10s;
  std::chrono::milliseconds write_timeout = 10s;
  std::chrono::milliseconds grace = 2s;
  std::size_t max_connections = 10000;
  // Bodies up to this size are read into the response buffer and sent with
  // the head in one send; larger ones go through send_file. send_file makes
  // a pipe per call (pipe2 + fcntl + 2 close) and needs a second request for
  // the head: for 1 KiB files the read path costs less CPU per request
  // (README, "HTTP file server").
  std::size_t small_file_max = 64 * 1024;
};

// openat2(root, path, O_RDONLY, RESOLVE_BENEATH) as an io_uring request on
// the root directory's object (counted on it, so the root's descriptor
// stays open while it runs). O_NONBLOCK: opening a FIFO must not hang.
class open_beneath_awaitable : public couring::detail::io_awaitable<open_beneath_awaitable> {
public:
  open_beneath_awaitable(const couring::file& dir, const char* path) noexcept
      : io_awaitable(dir.handle().ring_ptr(), dir.handle().state(), nullptr), path_(path) {
    how_.flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    how_.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    this->on_abandon = &abandon;
  }
  open_beneath_awaitable(open_beneath_awaitable&& o) noexcept
      : io_awaitable(std::move(o)), path_(o.path_), how_(o.how_) {
    this->on_abandon = &abandon;
  }
  void prepare(io_uring_sqe* sqe) noexcept {
    io_uring_prep_openat2(sqe, this->object->fd, path_, &how_);
  }
  static couring::result<int> make_result(int res) noexcept {
    if (res < 0)
      return couring::errno_code(res);
    return res;
  }

private:
  // The context goes away with the open in flight: nobody adopts the descriptor.
  static void abandon(couring::detail::operation* op) noexcept {
    if (op->res >= 0)
      ::close(op->res);
  }

  const char* path_;
  open_how how_{};
};

// The Date header, formatted once per second.
struct date_cache {
  std::time_t last = -1;
  char text[30] = {};
  std::string_view now() {
    const std::time_t t = std::time(nullptr);
    if (t != last) {
      http::format_http_date(t, text);
      last = t;
    }
    return {text, 29};
  }
};

// The open connections (as in echo_server): each coroutine links its own
// node, in its frame. `idle` marks one waiting for a request with nothing
// buffered: a stop closes those at once.
struct connection_list {
  struct node {
    connection_list* list;
    couring::tcp_stream* stream;
    node* prev = nullptr;
    node* next = nullptr;
    bool idle = false;
    node(connection_list& l, couring::tcp_stream& s) : list(&l), stream(&s) {
      next = l.head;
      if (next != nullptr)
        next->prev = this;
      l.head = this;
      ++l.count;
    }
    ~node() {
      (prev != nullptr ? prev->next : list->head) = next;
      if (next != nullptr)
        next->prev = prev;
      --list->count;
    }
    node(const node&) = delete;
    node& operator=(const node&) = delete;
  };
  node* head = nullptr;
  std::size_t count = 0;

  bool empty() const { return head == nullptr; }
  void close_idle() {
    for (node* n = head; n != nullptr; n = n->next)
      if (n->idle)
        n->stream->close();
  }
  void close_all() {
    for (node* n = head; n != nullptr; n = n->next)
      n->stream->close();
  }
};

struct server {
  couring::io_context& ctx;
  couring::file root; // O_PATH directory: the base of every open
  options opt;
  connection_list live;
  std::size_t refusing = 0; // 503 answers in flight
  bool stopping = false;
  date_cache date;
};

// Appends to a fixed buffer; the head buffer is sized for the longest head.
struct head_writer {
  char* begin;
  char* p;
  char* end;
  void put(std::string_view s) {
    const std::size_t n = std::min<std::size_t>(s.size(), static_cast<std::size_t>(end - p));
    std::memcpy(p, s.data(), n);
    p += n;
  }
  void number(std::uint64_t v) {
    char tmp[24];
    auto [e, ec] = std::to_chars(tmp, tmp + sizeof tmp, v);
    put(std::string_view(tmp, static_cast<std::size_t>(e - tmp)));
  }
  std::size_t size() const { return static_cast<std::size_t>(p - begin); }
};

constexpr std::size_t in_capacity = 16 * 1024; // > the 8 KiB head limit: room for pipelining
constexpr std::size_t head_capacity = 1024;
constexpr std::size_t path_capacity = 8192 + 32;   // a decoded target + "/index.html"
constexpr std::uint64_t send_file_chunk = 1 << 20; // the write timeout is per chunk

// The status line and the headers every response has.
void start_head(head_writer& w, server& srv, int status, bool keep_alive, int minor_version) {
  w.put("HTTP/1.1 ");
  w.number(static_cast<std::uint64_t>(status));
  w.put(" ");
  w.put(http::reason_phrase(status));
  w.put("\r\nServer: couring\r\nDate: ");
  w.put(srv.date.now());
  w.put("\r\n");
  if (!keep_alive)
    w.put("Connection: close\r\n");
  else if (minor_version == 0)
    w.put("Connection: keep-alive\r\n");
}

// A response without a file: the status as a short text body (none for HEAD).
std::size_t error_response(char* out, server& srv, int status, bool keep_alive, int minor_version,
                           bool head_only) {
  head_writer w{out, out, out + head_capacity};
  start_head(w, srv, status, keep_alive, minor_version);
  if (status == 405)
    w.put("Allow: GET, HEAD\r\n");
  const std::string_view reason = http::reason_phrase(status);
  w.put("Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
  w.number(reason.size() + 5);
  w.put("\r\n\r\n");
  if (!head_only) {
    w.number(static_cast<std::uint64_t>(status));
    w.put(" ");
    w.put(reason);
    w.put("\n");
  }
  return w.size();
}

int status_of_open_error(std::error_code ec) {
  switch (ec.value()) {
  case ENOENT:
  case ENOTDIR:
  case ENAMETOOLONG:
    return 404;
  case EXDEV:  // RESOLVE_BENEATH: the path (a symlink) leads out of the root
  case ELOOP:  // too many symlinks, or a magic link
  case EACCES: // no permission
  case EPERM:
    return 403;
  case EMFILE:
  case ENFILE:
  case ENOMEM:
    return 503;
  default:
    return 500;
  }
}

// Sends buf[0, len) with a write timeout on every send: a peer that stops
// reading is dropped when one send makes no progress for that long. Each
// send is one request with a linked timeout (no allocation).
#define SEND_ALL_OR_DROP(stream, data, len, timeout)                                               \
  for (std::size_t sent_ = 0; sent_ < (len);) {                                                    \
    auto w_ = co_await couring::with_timeout(                                                      \
        (stream).write(std::as_bytes(std::span((data) + sent_, (len)-sent_))), (timeout));         \
    if (!w_)                                                                                       \
      co_return;                                                                                   \
    sent_ += *w_;                                                                                  \
  }

// After an error response, the client may still be sending (the rest of an
// oversized head): closing with unread data would reset the connection and
// could destroy the response before the client read it. So: half-close,
// read and discard for a while (bounded in time and bytes), then close.
couring::task<void> linger_close(couring::tcp_stream& stream, char* scratch, std::size_t size) {
  (void)stream.shutdown_write();
  const auto deadline = clock_type::now() + 1s;
  for (std::size_t drained = 0; drained < (1u << 20);) {
    const auto left = deadline - clock_type::now();
    if (left <= 0s)
      break;
    auto n = co_await couring::with_timeout(
        stream.read(std::as_writable_bytes(std::span(scratch, size))), left);
    if (!n || *n == 0)
      break;
    drained += *n;
  }
}

couring::task<void> serve_connection(server& srv, couring::tcp_stream stream) {
  connection_list::node registered(srv.live, stream);
  (void)stream.set_no_delay(true);
  // Non-blocking: send_file's splices then never sleep in a kernel worker
  // (send_file.hpp); io_uring's own sends and receives wait with a poll
  // either way.
  if (const int fl = ::fcntl(stream.native_handle(), F_GETFL); fl >= 0)
    (void)::fcntl(stream.native_handle(), F_SETFL, fl | O_NONBLOCK);
  const options& opt = srv.opt;
  // One allocation per connection, none per request: the request buffer,
  // the response head with room for a small body behind it, and the path.
  const std::size_t out_capacity = head_capacity + opt.small_file_max;
  auto memory = std::make_unique<char[]>(in_capacity + out_capacity + path_capacity);
  char* const in = memory.get();
  char* const out = in + in_capacity;
  char* const path = out + out_capacity;
  std::size_t begin = 0, end = 0; // unparsed bytes: in[begin, end)
  const http::limits limits{};

  for (;;) {
    // --- a complete request head ---------------------------------------------
    http::request req;
    http::parse_outcome parsed;
    const auto deadline = clock_type::now() + opt.idle_timeout;
    for (;;) {
      parsed = http::parse_request(std::string_view(in + begin, end - begin), req, limits);
      if (parsed.state != http::parse_outcome::incomplete)
        break;
      if (srv.stopping && begin == end)
        co_return;
      if (begin > 0) { // pipelined leftovers to the front
        std::memmove(in, in + begin, end - begin);
        end -= begin;
        begin = 0;
      }
      const auto left = deadline - clock_type::now();
      if (left <= 0s)
        co_return; // the whole request did not come in time (slowloris)
      registered.idle = end == 0;
      auto n = co_await couring::with_timeout(
          stream.read(std::as_writable_bytes(std::span(in + end, in_capacity - end))), left);
      registered.idle = false;
      if (!n || *n == 0)
        co_return; // end of stream, reset, idle timeout, or closed by a stop
      end += *n;
    }
    if (parsed.state == http::parse_outcome::failed) {
      const std::size_t len = error_response(out, srv, parsed.status, false, 1, false);
      SEND_ALL_OR_DROP(stream, out, len, opt.write_timeout);
      co_await linger_close(stream, in, in_capacity);
      co_return;
    }
    begin += parsed.consumed;
    // A body on a GET is allowed but means nothing here: answer, then close
    // rather than skip it.
    const bool keep_alive = req.keep_alive && !srv.stopping && req.content_length == 0;
    const bool head_only = req.method == http::method::head;

    // --- the file ------------------------------------------------------------
    int status = 0;
    couring::file f;
    struct stat st {};
    std::string_view file_path;
    if (req.method == http::method::other) {
      status = 405;
    } else {
      const http::target_path t = http::decode_target(req.target, path, path_capacity - 16);
      if (t.status == http::target_status::bad_request) {
        status = 400;
      } else if (t.status == http::target_status::forbidden) {
        status = 403;
      } else {
        for (int attempt = 0; attempt < 2 && status == 0; ++attempt) {
          const char* p = attempt == 0 && t.length == 0 ? "." : path;
          auto fd = co_await open_beneath_awaitable(srv.root, p);
          if (!fd) {
            status = attempt == 0 ? status_of_open_error(fd.error()) : 404;
            break;
          }
          f = couring::file(srv.ctx, *fd);
          // fstat(2) rather than IORING_OP_STATX: the kernel always hands
          // STATX to an io-wq worker (a thread switch per request), while
          // the attributes of an open file are in memory: the syscall is
          // cheaper than the round trip and never waits for the disk.
          if (::fstat(f.native_handle(), &st) != 0) {
            status = 500;
            break;
          }
          if (S_ISREG(st.st_mode)) {
            file_path = std::string_view(p);
            break;
          }
          if (!S_ISDIR(st.st_mode) || attempt == 1) {
            status = attempt == 0 ? 403 : 404; // a device or FIFO; a directory named index.html
            break;
          }
          // A directory: its index.html, or 404.
          f.close();
          std::size_t n = t.length;
          if (n > 0)
            path[n++] = '/';
          std::memcpy(path + n, "index.html", 11);
        }
      }
    }

    std::size_t len = 0;
    std::uint64_t body_first = 0, body_length = 0;
    bool small_body = false;
    if (status != 0) {
      len = error_response(out, srv, status, keep_alive, req.minor_version, head_only);
    } else {
      const auto size = static_cast<std::uint64_t>(st.st_size);
      status = 200;
      http::byte_range range;
      if (!req.if_modified_since.empty()) {
        // RFC 9110 13.1.3: Last-Modified is at second precision.
        if (auto since = http::parse_http_date(req.if_modified_since);
            since && st.st_mtim.tv_sec <= *since)
          status = 304;
      }
      if (status == 200 && !req.range.empty()) {
        range = http::parse_range(req.range, size);
        if (range.state == http::byte_range::unsatisfiable)
          status = 416;
        else if (range.state == http::byte_range::satisfiable)
          status = 206;
      }
      head_writer w{out, out, out + head_capacity};
      start_head(w, srv, status, keep_alive, req.minor_version);
      char modified[30];
      http::format_http_date(st.st_mtim.tv_sec, modified);
      w.put("Last-Modified: ");
      w.put(std::string_view(modified, 29));
      w.put("\r\n");
      if (status != 304) {
        w.put("Accept-Ranges: bytes\r\n");
        if (status == 416) {
          w.put("Content-Range: bytes */");
          w.number(size);
          w.put("\r\nContent-Length: 0\r\n");
        } else {
          w.put("Content-Type: ");
          w.put(http::content_type(file_path));
          body_first = status == 206 ? range.first : 0;
          body_length = status == 206 ? range.last - range.first + 1 : size;
          if (status == 206) {
            w.put("\r\nContent-Range: bytes ");
            w.number(range.first);
            w.put("-");
            w.number(range.last);
            w.put("/");
            w.number(size);
          }
          w.put("\r\nContent-Length: ");
          w.number(body_length);
          w.put("\r\n");
        }
      }
      w.put("\r\n");
      len = w.size();
      if (head_only || status == 304 || status == 416)
        body_length = 0;
      small_body = body_length <= opt.small_file_max;
      if (body_length > 0 && small_body) {
        auto r = co_await f.read_exactly_at(
            std::as_writable_bytes(std::span(out + len, body_length)), body_first);
        if (!r)
          co_return; // the file shrank under us: the promised length cannot be kept
        len += body_length;
      }
    }

    // --- the response ----------------------------------------------------------
    SEND_ALL_OR_DROP(stream, out, len, opt.write_timeout);
    if (body_length > 0 && !small_body) {
      for (std::uint64_t off = body_first, left = body_length; left > 0;) {
        const std::size_t chunk = std::min(left, send_file_chunk);
        auto sent = co_await couring::with_timeout(couring::send_file(stream, f, off, chunk),
                                                   opt.write_timeout);
        if (!sent)
          co_return;
        off += chunk;
        left -= chunk;
      }
    }
    f.close();
    if (!keep_alive) {
      if (req.content_length > 0)
        co_await linger_close(stream, in, in_capacity);
      co_return;
    }
  }
}

// Past the connection limit: a 503 and a close, so the client knows why.
couring::task<void> refuse(server& srv, couring::tcp_stream stream) {
  ++srv.refusing;
  char out[head_capacity];
  const std::size_t len = error_response(out, srv, 503, false, 1, false);
  auto w = co_await couring::with_timeout(stream.write(std::as_bytes(std::span(out, len))), 1s);
  (void)w;
  (void)stream.shutdown_write();
  --srv.refusing;
}

couring::task<void> accept_loop(server& srv, couring::tcp_listener& listener) {
  for (;;) {
    auto conn = co_await listener.accept();
    if (conn) {
      if (srv.live.count < srv.opt.max_connections)
        srv.ctx.spawn(serve_connection(srv, std::move(*conn)));
      else if (srv.refusing < 1024)
        srv.ctx.spawn(refuse(srv, std::move(*conn)));
      // else: a flood; the connection is closed without a word
      continue;
    }
    if (conn.error() == std::errc::operation_canceled)
      co_return; // the listener was closed: stopping
    // EMFILE and friends: the listener backs off by itself; keep serving.
  }
}

// Stops one server in order: no new connections, requests in flight get the
// grace period, then everything is closed.
couring::task<void> drain_and_close(server& srv, couring::tcp_listener& listener) {
  srv.stopping = true;
  listener.close(); // new connections are refused from now on
  srv.live.close_idle();
  const auto deadline = clock_type::now() + srv.opt.grace;
  while ((!srv.live.empty() || srv.refusing > 0) && clock_type::now() < deadline) {
    (void)co_await couring::sleep_for(srv.ctx, 10ms);
    srv.live.close_idle(); // those that finished their request meanwhile
  }
  srv.live.close_all();
  for (int i = 0; i < 1000 && (!srv.live.empty() || srv.refusing > 0); ++i)
    (void)co_await couring::sleep_for(srv.ctx, 1ms);
}

couring::task<void> run_until_signal(server& srv, couring::tcp_listener& listener,
                                     couring::signal_set& signals) {
  srv.ctx.spawn(accept_loop(srv, listener));
  (void)co_await signals.wait();
  co_await drain_and_close(srv, listener);
}

// --threads N: a server per context (its own root descriptor, connection
// list and SO_REUSEPORT listener on the same port); the kernel spreads the
// connections. Each context's objects are made, used and closed there.
couring::task<void> run_threaded(couring::runtime& rt, const options& opt, couring::endpoint ep,
                                 int root_fd) {
  couring::io_context& home = rt.context(0);
  couring::signal_set signals(home, {SIGINT, SIGTERM}); // blocked in every thread by main
  std::vector<std::unique_ptr<server>> servers(rt.size());
  std::vector<couring::tcp_listener> listeners(rt.size());
  for (std::size_t i = 0; i < rt.size(); ++i) {
    couring::io_context& ctx = rt.context(i);
    co_await couring::switch_to(ctx);
    const int fd = ::fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
      throw std::system_error(errno, std::system_category(), "dup of the root descriptor");
    servers[i].reset(new server{ctx, couring::file(ctx, fd), opt, {}, 0, false, {}});
    auto l = couring::tcp_listener::bind(ctx, ep, {.reuse_port = true});
    if (!l)
      throw std::system_error(l.error(), "cannot listen on " + ep.to_string());
    listeners[i] = std::move(*l);
    ep = listeners[i].local_endpoint(); // port 0: the one context 0 got, for the others
    ctx.spawn(accept_loop(*servers[i], listeners[i]));
  }
  co_await couring::switch_to(home);
  std::cout << "listening on " << ep.to_string() << " with " << rt.size() << " threads"
            << std::endl;
  (void)co_await signals.wait();
  std::atomic<std::size_t> stopped{0};
  auto stop_one = [&](std::size_t i) -> couring::task<void> {
    co_await drain_and_close(*servers[i], listeners[i]);
    servers[i].reset(); // closes the root descriptor where it belongs
    listeners[i] = couring::tcp_listener();
    stopped.fetch_add(1);
  };
  for (std::size_t i = 0; i < rt.size(); ++i)
    couring::spawn_on(rt.context(i), stop_one(i));
  while (stopped.load() < rt.size())
    (void)co_await couring::sleep_for(home, 5ms);
}

void usage(std::FILE* out) {
  std::fputs("usage: http_file_server --root DIR [--listen ADDR:PORT] [options]\n"
             "  Serves the files under DIR over HTTP/1.1 (GET, HEAD, keep-alive, ranges).\n"
             "  --root DIR              the directory to serve (nothing outside it is reachable)\n"
             "  --listen ADDR:PORT      where to listen (default 127.0.0.1:8080; port 0: any free\n"
             "                          port, printed as 'listening on ADDR:PORT')\n"
             "  --idle-timeout SECONDS  a request must arrive completely within this time after\n"
             "                          the previous one (default 10)\n"
             "  --write-timeout SECONDS a send that makes no progress for this long drops the\n"
             "                          connection (default 10)\n"
             "  --max-connections N     past this, new connections get 503 (default 10000)\n"
             "  --small-file-max BYTES  bodies up to this size are read and sent with the head;\n"
             "                          larger ones with send_file (default 65536)\n"
             "  --grace SECONDS         on SIGINT/SIGTERM, how long requests in flight may go on\n"
             "                          (default 2)\n"
             "  --threads N             serve on N threads, one io_context and SO_REUSEPORT\n"
             "                          listener each (0: one per CPU; default: 1, no runtime)\n"
             "  SIGINT/SIGTERM stop the server cleanly (exit status 0).\n",
             out);
}

bool parse_seconds(std::string_view s, std::chrono::milliseconds& out) {
  std::string text(s);
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !(v >= 0) || v > 1e6)
    return false;
  out = std::chrono::milliseconds(static_cast<long long>(v * 1000));
  return true;
}

bool parse_size(std::string_view s, std::size_t& out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size();
}

} // namespace

int main(int argc, char** argv) {
  options opt;
  std::size_t threads = 1;
  bool threaded = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    }
    if (i + 1 >= argc || !arg.starts_with("--")) {
      usage(stderr);
      return 2;
    }
    const std::string_view value = argv[++i];
    bool ok = true;
    if (arg == "--root")
      opt.root = value;
    else if (arg == "--listen")
      opt.listen = value;
    else if (arg == "--idle-timeout")
      ok = parse_seconds(value, opt.idle_timeout) && opt.idle_timeout > 0ms;
    else if (arg == "--write-timeout")
      ok = parse_seconds(value, opt.write_timeout) && opt.write_timeout > 0ms;
    else if (arg == "--grace")
      ok = parse_seconds(value, opt.grace);
    else if (arg == "--max-connections")
      ok = parse_size(value, opt.max_connections) && opt.max_connections > 0;
    else if (arg == "--threads")
      ok = (threaded = true) && parse_size(value, threads) && threads <= 1024;
    else if (arg == "--small-file-max")
      ok = parse_size(value, opt.small_file_max) && opt.small_file_max <= (16u << 20);
    else
      ok = false;
    if (!ok) {
      std::cerr << "http_file_server: bad option " << arg << " '" << value << "'\n";
      usage(stderr);
      return 2;
    }
  }
  if (opt.root.empty()) {
    usage(stderr);
    return 2;
  }
  auto ep = couring::endpoint::parse(opt.listen);
  if (!ep) {
    std::cerr << "http_file_server: bad --listen '" << opt.listen << "'\n";
    return 2;
  }

  // Thousands of connections (and a file each) need more than 1024 descriptors.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  const int root_fd = ::open(opt.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) {
    std::cerr << "http_file_server: cannot open --root " << opt.root << ": " << std::strerror(errno)
              << '\n';
    return 1;
  }
  if (threaded) {
    try {
      // Blocked before the runtime's threads start: they inherit the mask,
      // and only the signal_set on context 0 takes the signals.
      sigset_t mask;
      sigemptyset(&mask);
      sigaddset(&mask, SIGINT);
      sigaddset(&mask, SIGTERM);
      pthread_sigmask(SIG_BLOCK, &mask, nullptr);
      couring::runtime rt({.threads = static_cast<unsigned>(threads)});
      rt.run(run_threaded(rt, opt, *ep, root_fd));
    } catch (const std::exception& e) {
      std::cerr << "http_file_server: " << e.what() << '\n';
      ::close(root_fd);
      return 1;
    }
    ::close(root_fd);
    return 0;
  }
  try {
    couring::io_context ctx;
    // Blocked in this (the only) thread before anything else can start one.
    couring::signal_set signals(ctx, {SIGINT, SIGTERM});
    server srv{ctx, couring::file(ctx, root_fd), opt, {}, 0, false, {}};
    auto listener = couring::tcp_listener::bind(ctx, *ep);
    if (!listener) {
      std::cerr << "http_file_server: cannot listen on " << ep->to_string() << ": "
                << listener.error().message() << '\n';
      return 1;
    }
    if (ep->port() == 0)
      std::cout << "listening on " << listener->local_endpoint().to_string() << std::endl;
    ctx.run(run_until_signal(srv, *listener, signals));
  } catch (const std::exception& e) {
    std::cerr << "http_file_server: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
