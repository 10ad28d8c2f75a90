// An intrusive doubly linked list of operations through a chosen trio of members (next,
// prev, "linked"), so one operation can sit in several such lists at once: the
// deadline list and the cancel-retry list. Never allocates.
#pragma once

#include "operation.hpp"

namespace ringsock::detail {

template <operation* operation::*Next, operation* operation::*Prev, bool operation::*Linked>
class op_list {
public:
    bool empty() const noexcept { return head_ == nullptr; }
    operation* front() const noexcept { return head_; }
    static operation* next(const operation* op) noexcept { return op->*Next; }

    void push(operation* op) noexcept {
        if (op->*Linked) return;
        op->*Linked = true;
        op->*Prev = nullptr;
        op->*Next = head_;
        if (head_) head_->*Prev = op;
        head_ = op;
    }
    void erase(operation* op) noexcept {
        if (!(op->*Linked)) return;
        op->*Linked = false;
        if (op->*Prev) (op->*Prev)->*Next = op->*Next;
        else head_ = op->*Next;
        if (op->*Next) (op->*Next)->*Prev = op->*Prev;
        op->*Next = op->*Prev = nullptr;
    }
    void clear() noexcept {
        while (head_) erase(head_);
    }

private:
    operation* head_ = nullptr;
};

}  // namespace ringsock::detail
