#include <couring/detail/cancel_scope.hpp>

#include <couring/detail/ring.hpp>

namespace couring::detail {

void cancel_scope::attach_to(cancel_scope* parent) noexcept {
  detach();
  parent_ = parent;
  if (parent_ == nullptr)
    return;
  next_sibling_ = parent_->first_child_;
  if (next_sibling_ != nullptr)
    next_sibling_->prev_sibling_ = this;
  parent_->first_child_ = this;
  if (parent_->cancelled())
    cancel(parent_->reason());
}

void cancel_scope::detach() noexcept {
  if (parent_ != nullptr) {
    if (prev_sibling_ != nullptr)
      prev_sibling_->next_sibling_ = next_sibling_;
    else
      parent_->first_child_ = next_sibling_;
    if (next_sibling_ != nullptr)
      next_sibling_->prev_sibling_ = prev_sibling_;
  }
  // Children may outlive this scope while frames are torn down in any order:
  // cut them loose so that they never touch this one again.
  for (cancel_scope* c = first_child_; c != nullptr;) {
    cancel_scope* next = c->next_sibling_;
    c->parent_ = nullptr;
    c->prev_sibling_ = c->next_sibling_ = nullptr;
    c = next;
  }
  first_child_ = nullptr;
  parent_ = nullptr;
  prev_sibling_ = next_sibling_ = nullptr;
}

void cancel_scope::cancel(int reason) noexcept {
  if (reason_ != 0)
    return;
  reason_ = reason;
  if (current_ != nullptr) {
    if (current_->cancel_fn != nullptr)
      current_->cancel_fn(current_);
    else
      current_->owner_ring->cancel(current_);
  }
  for (cancel_scope* c = first_child_; c != nullptr; c = c->next_sibling_)
    c->cancel(reason);
}

} // namespace couring::detail
