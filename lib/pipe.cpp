#include <couring/pipe.hpp>

#include <cerrno>

#include <fcntl.h>
#include <unistd.h>

namespace couring {

result<std::pair<pipe_reader, pipe_writer>> pipe(io_context& ctx) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return std::error_code(errno, std::system_category());
  // Each end is owned from its construction on (a throwing second one still
  // closes its own descriptor; the first is closed by its destructor).
  pipe_reader reader;
  try {
    reader = pipe_reader(ctx, fds[0]);
  } catch (...) {
    ::close(fds[1]);
    throw;
  }
  pipe_writer writer(ctx, fds[1]);
  return std::pair<pipe_reader, pipe_writer>(std::move(reader), std::move(writer));
}

} // namespace couring
