// pooled_task<T>: a lazy coroutine like task<T> whose frame is recycled, so an
// operation that is called again and again (a buffered read per line) allocates its
// frame once, not once per call. task<T> cannot do this: its promise has no allocator.
#pragma once

#include <concepts>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <new>
#include <utility>

namespace ringsock::detail {

/// Keeps one freed coroutine frame for the next call. An object that starts the same
/// coroutine repeatedly owns one (it must outlive every frame allocated from it); a
/// coroutine with no such owner uses the calling thread's slot.
class frame_slot {
public:
    frame_slot() noexcept = default;
    frame_slot(frame_slot&& o) noexcept : block_(std::exchange(o.block_, nullptr)), size_(o.size_) {}
    frame_slot& operator=(frame_slot&& o) noexcept {
        if (this != &o) {
            release();
            block_ = std::exchange(o.block_, nullptr);
            size_ = o.size_;
        }
        return *this;
    }
    ~frame_slot() { release(); }

    /// Makes the next frame allocated on this thread come from (and go back to) `slot`.
    /// TRICKY: a thread-local hand-over instead of an operator new taking the owner
    /// (which the promise could be given), because g++ 12 then reports every frame's
    /// deallocation as mismatched (-Wmismatched-new-delete).
    static void use_for_next_frame(frame_slot* slot) noexcept { next_owner() = slot; }

    static void* allocate(std::size_t n) {
        frame_slot* owner = std::exchange(next_owner(), nullptr);
        frame_slot& slot = owner ? *owner : thread_slot();
        void* base;
        std::size_t size = n + header_size;
        if (slot.block_ && slot.size_ >= size) {
            base = std::exchange(slot.block_, nullptr);
            size = slot.size_;
        } else {
            base = ::operator new(size);
        }
        new (base) header{owner, size};
        return static_cast<std::byte*>(base) + header_size;
    }

    static void deallocate(void* frame) noexcept {
        void* base = static_cast<std::byte*>(frame) - header_size;
        const header h = *static_cast<header*>(base);
        // TRICKY: an ownerless frame goes to the slot of the thread freeing it, never to
        // the allocating thread's, which may have exited.
        frame_slot& slot = h.owner ? *h.owner : thread_slot();
        if (slot.block_ == nullptr) {
            slot.block_ = base;
            slot.size_ = h.size;
        } else if (slot.size_ < h.size) {  // keep the larger block
            std::swap(slot.block_, base);
            slot.size_ = h.size;
            ::operator delete(base);
        } else {
            ::operator delete(base);
        }
    }

private:
    struct header {
        frame_slot* owner;
        std::size_t size;
    };
    static constexpr std::size_t header_size = alignof(std::max_align_t) > sizeof(header)
                                                   ? alignof(std::max_align_t)
                                                   : (sizeof(header) + alignof(std::max_align_t) - 1) /
                                                         alignof(std::max_align_t) * alignof(std::max_align_t);

    static frame_slot*& next_owner() noexcept {
        static thread_local frame_slot* owner = nullptr;
        return owner;
    }
    static frame_slot& thread_slot() noexcept {
        static thread_local frame_slot slot;
        return slot;
    }
    void release() noexcept {
        if (block_) ::operator delete(std::exchange(block_, nullptr));
    }

    void* block_ = nullptr;
    std::size_t size_ = 0;
};

/// Base of a class whose coroutines (pooled_task) draw their frames from its own
/// slot: back to back calls on one object then reuse one frame.
class frame_slot_owner {
protected:
    frame_slot_owner() noexcept = default;
    /// While the returned object lives, this thread's next coroutine frame comes from
    /// this object's slot: hold it across the call that starts a pooled_task coroutine.
    /// Reset afterwards even if no frame was allocated (the compiler may elide one).
    [[nodiscard]] auto use_slot() noexcept {
        struct scope {
            explicit scope(frame_slot* s) noexcept { frame_slot::use_for_next_frame(s); }
            scope(const scope&) = delete;
            scope& operator=(const scope&) = delete;
            ~scope() { frame_slot::use_for_next_frame(nullptr); }
        };
        return scope(&slot_);
    }

private:
    frame_slot slot_;
};

/// A lazy coroutine producing T (default-constructible). Starts when awaited, resumes
/// its awaiter by symmetric transfer; an exception inside is rethrown from co_await.
template <class T>
class [[nodiscard]] pooled_task {
public:
    struct promise_type {
        static void* operator new(std::size_t n) { return frame_slot::allocate(n); }
        static void operator delete(void* p) noexcept { frame_slot::deallocate(p); }

        pooled_task get_return_object() noexcept {
            return pooled_task(std::coroutine_handle<promise_type>::from_promise(*this));
        }
        std::suspend_always initial_suspend() const noexcept { return {}; }
        struct final_awaiter {
            bool await_ready() const noexcept { return false; }
            std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) const noexcept {
                return h.promise().continuation;
            }
            void await_resume() const noexcept {}
        };
        final_awaiter final_suspend() const noexcept { return {}; }
        void return_value(T v) { value = std::move(v); }
        void unhandled_exception() noexcept { error = std::current_exception(); }

        T value{};
        std::exception_ptr error;
        std::coroutine_handle<> continuation = std::noop_coroutine();
    };

    explicit pooled_task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
    pooled_task(pooled_task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    pooled_task& operator=(pooled_task&&) = delete;
    ~pooled_task() {
        if (h_) h_.destroy();
    }

    bool await_ready() const noexcept { return false; }
    std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
        h_.promise().continuation = awaiting;
        return h_;
    }
    T await_resume() {
        if (h_.promise().error) std::rethrow_exception(h_.promise().error);
        return std::move(h_.promise().value);
    }

private:
    std::coroutine_handle<promise_type> h_;
};

}  // namespace ringsock::detail
