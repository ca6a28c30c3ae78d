#include <couring/error.hpp>

namespace couring {

namespace {
class couring_category final : public std::error_category {
public:
  const char* name() const noexcept override { return "couring"; }
  std::string message(int value) const override {
    switch (static_cast<error>(value)) {
    case error::end_of_stream:
      return "end of stream before the requested number of bytes";
    case error::end_of_file:
      return "end of file before the requested range (the file is shorter, or shrank)";
    case error::direct_descriptor:
      return "the operation needs a file descriptor, and this stream is a direct descriptor "
             "(a slot of the ring's file table; see listen_options::direct_descriptors)";
    case error::not_registered:
      return "the buffer is not inside one buffer of the context's registered_buffers";
    }
    return "unknown couring error";
  }
};
} // namespace

const std::error_category& error_category() noexcept {
  static const couring_category category;
  return category;
}

} // namespace couring
