// task<T>: a lazy coroutine that starts when awaited and resumes its awaiter by
// symmetric transfer, so long chains of synchronous completions use no stack.
#pragma once

#include <coroutine>
#include <exception>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <variant>

namespace ringsock {

template <class T = void>
class task;

namespace detail {

struct task_promise_base {
    struct final_awaiter {
        bool await_ready() const noexcept { return false; }
        template <class Promise>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> h) noexcept {
            // TRICKY: symmetric transfer; returning the continuation is a tail call,
            // so a chain of tasks that complete synchronously does not grow the stack.
            return h.promise().continuation_;
        }
        void await_resume() const noexcept {}
    };

    std::suspend_always initial_suspend() const noexcept { return {}; }
    final_awaiter final_suspend() const noexcept { return {}; }

    std::coroutine_handle<> continuation_ = std::noop_coroutine();
};

template <class T>
struct task_promise : task_promise_base {
    task<T> get_return_object() noexcept;
    void unhandled_exception() noexcept { result_.template emplace<2>(std::current_exception()); }
    template <class U>
        requires std::is_convertible_v<U&&, T>
    void return_value(U&& v) { result_.template emplace<1>(std::forward<U>(v)); }

    T take() {
        if (result_.index() == 2) std::rethrow_exception(std::get<2>(result_));
        return std::move(std::get<1>(result_));
    }

    std::variant<std::monostate, T, std::exception_ptr> result_;
};

template <>
struct task_promise<void> : task_promise_base {
    task<void> get_return_object() noexcept;
    void unhandled_exception() noexcept { exception_ = std::current_exception(); }
    void return_void() noexcept {}
    void take() {
        if (exception_) std::rethrow_exception(exception_);
    }
    std::exception_ptr exception_;
};

}  // namespace detail

/// A lazy coroutine producing T. It starts when first awaited; an exception thrown
/// inside it is rethrown from `co_await`. Destroying a task destroys its frame.
template <class T>
class [[nodiscard]] task {
public:
    /// The coroutine promise (for the compiler).
    using promise_type = detail::task_promise<T>;
    /// What `co_await` on the task yields.
    using value_type = T;

    /// An empty task: valid() is false; awaiting it throws std::logic_error.
    task() noexcept = default;
    /// Takes ownership of the frame `h` (for the promise and executors).
    explicit task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
    /// Takes `other`'s frame, leaving it empty.
    task(task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
    /// Destroys the frame held (even if started and suspended), then takes `other`'s.
    task& operator=(task&& other) noexcept {
        if (this != &other) {
            if (h_) h_.destroy();
            h_ = std::exchange(other.h_, {});
        }
        return *this;
    }
    task(const task&) = delete;
    task& operator=(const task&) = delete;
    ~task() {
        if (h_) h_.destroy();
    }

    /// True when it holds a frame.
    bool valid() const noexcept { return static_cast<bool>(h_); }
    /// True when the coroutine has finished (or there is none).
    bool done() const noexcept { return !h_ || h_.done(); }

    // Implementation only: what co_await on a task uses.
    /// \cond
    struct awaiter {
        std::coroutine_handle<promise_type> h;
        bool await_ready() const noexcept { return !h || h.done(); }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
            h.promise().continuation_ = awaiting;
            return h;
        }
        T await_resume() {
            if (!h) throw std::logic_error("ringsock: co_await on an empty (moved-from or default) task");
            return h.promise().take();
        }
    };
    /// \endcond

    /// Starts the coroutine and resumes the awaiter when it finishes, yielding its value
    /// or rethrowing its exception. The task keeps the frame; await it once.
    /// Throws std::logic_error for an empty task.
    awaiter operator co_await() && noexcept { return awaiter{h_}; }
    /// As the rvalue overload: `co_await t` on a named task.
    awaiter operator co_await() & noexcept { return awaiter{h_}; }

    /// For executors: the frame, ownership kept by the task.
    std::coroutine_handle<promise_type> handle() const noexcept { return h_; }
    /// For executors: gives up ownership of the frame.
    std::coroutine_handle<promise_type> release() noexcept { return std::exchange(h_, {}); }

private:
    std::coroutine_handle<promise_type> h_{};
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
    return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
    return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}
}  // namespace detail

}  // namespace ringsock
