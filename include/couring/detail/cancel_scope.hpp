#pragma once

// A cancel_scope is the link between "cancel this piece of work" and the one
// io_uring operation that work is suspended on right now, however deeply nested
// in tasks it is. Every task carries a pointer to the scope it runs in
// (inherited from the task that awaits it); every operation registers itself as
// the scope's current operation while it is in flight. Timeouts, stop tokens
// and when_any open child scopes, so cancelling a scope reaches its children.
//
// Scopes live inside coroutine frames or awaiters: no allocation.

namespace couring::detail {

struct operation;

class cancel_scope {
public:
  cancel_scope() noexcept = default;
  explicit cancel_scope(cancel_scope* parent) noexcept { attach_to(parent); }
  cancel_scope(const cancel_scope&) = delete;
  cancel_scope& operator=(const cancel_scope&) = delete;
  ~cancel_scope() { detach(); }

  // Links this scope below parent (nullptr: a root). A parent that is already
  // cancelled cancels the child at once.
  void attach_to(cancel_scope* parent) noexcept;
  void detach() noexcept;

  // Requests cancellation with the given errno (ECANCELED, ETIMEDOUT): submits
  // IORING_OP_ASYNC_CANCEL for the current operation and cancels every child.
  // Idempotent; the first reason wins.
  void cancel(int reason) noexcept;

  bool cancelled() const noexcept { return reason_ != 0; }
  int reason() const noexcept { return reason_; }

  operation* current() const noexcept { return current_; }
  void set_current(operation* op) noexcept { current_ = op; }
  void clear_current(operation* op) noexcept {
    if (current_ == op)
      current_ = nullptr;
  }

  // Links of io_context's queue of cancellations requested from other
  // threads (intrusive: requesting one must not allocate).
  cancel_scope* remote_next = nullptr;
  bool remote_queued = false;

private:
  operation* current_ = nullptr;
  int reason_ = 0;
  cancel_scope* parent_ = nullptr;
  cancel_scope* first_child_ = nullptr;
  cancel_scope* next_sibling_ = nullptr;
  cancel_scope* prev_sibling_ = nullptr;
};

} // namespace couring::detail
