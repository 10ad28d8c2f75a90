// Machinery shared by when_all and when_any: run several tasks concurrently as children
// of one awaiting coroutine, which resumes only after every child has finished.
#pragma once

#include <array>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <functional>
#include <span>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>

#include "../task.hpp"

namespace ringsock::detail {

template <class T>
struct is_task : std::false_type {};
template <class T>
struct is_task<task<T>> : std::true_type {};

/// What when_all/when_any accept as a child: a task<T>, or a callable that takes the
/// combinator's std::stop_token and returns a task<T>.
template <class A>
concept group_child_arg =
    is_task<A>::value || (std::is_invocable_v<A&, std::stop_token> &&
                          is_task<std::invoke_result_t<A&, std::stop_token>>::value);

// SFINAE-friendly: no `type` for anything else (e.g. the leading std::stop_token, which
// the overload without a parent token must reject without a hard error).
template <class A>
struct group_child_task {};
template <class A>
    requires std::is_invocable_v<A&, std::stop_token>
struct group_child_task<A> {
    using type = std::invoke_result_t<A&, std::stop_token>;
};
template <class T>
struct group_child_task<task<T>> {
    using type = task<T>;
};

/// The value a child produces, with void as std::monostate.
template <class A>
using group_child_value_t = std::conditional_t<std::is_void_v<typename group_child_task<A>::type::value_type>,
                                               std::monostate, typename group_child_task<A>::type::value_type>;

/// Turns a child argument into its task: a task is moved out, a callable is invoked with
/// the token (the callable stays where it is and must outlive the task).
template <class A>
auto make_group_task(A& arg, const std::stop_token& token) {
    if constexpr (is_task<A>::value) return std::move(arg);
    else return std::invoke(arg, token);
}

/// Counts unfinished children; the last one to finish resumes the parent.
struct group_base {
    std::coroutine_handle<> parent{};
    std::size_t remaining = 0;
    std::coroutine_handle<> child_finished() noexcept {
        if (--remaining == 0) return parent;
        return std::noop_coroutine();
    }
};

/// The wrapper coroutine around one child: suspended at its end until its owner
/// (a group_frame) destroys it.
struct group_child_promise;
struct group_child {
    using promise_type = group_child_promise;
    std::coroutine_handle<group_child_promise> h;
};

struct group_child_promise {
    group_base* group = nullptr;
    group_child get_return_object() noexcept {
        return {std::coroutine_handle<group_child_promise>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    struct final_awaiter {
        bool await_ready() const noexcept { return false; }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<group_child_promise> h) noexcept {
            // TRICKY: symmetric transfer; the last child resumes the parent directly.
            return h.promise().group->child_finished();
        }
        void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() const noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }  // the bodies catch everything
};

/// Owns one wrapper frame. Destroying it while the child is suspended destroys the
/// child's task too, which settles its operations (cancel, then reap their completions).
class group_frame {
public:
    group_frame() noexcept = default;
    group_frame(group_child c, group_base* g) noexcept : h_(c.h) { h_.promise().group = g; }
    group_frame(group_frame&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    group_frame& operator=(group_frame&&) = delete;
    ~group_frame() {
        if (h_) h_.destroy();
    }
    std::coroutine_handle<group_child_promise> handle() const noexcept { return h_; }

private:
    std::coroutine_handle<group_child_promise> h_{};
};

/// co_await: starts every child in order (each runs until its first suspension) and
/// resumes the awaiting coroutine once all have finished.
template <std::size_t N>
class group_awaiter {
public:
    group_awaiter(group_base* g, std::array<group_frame, N>& children) noexcept : g_(g), children_(children) {}
    bool await_ready() const noexcept { return N == 0; }
    bool await_suspend(std::coroutine_handle<> parent) noexcept {
        g_->parent = parent;
        // TRICKY: one extra count held while starting, so a child that finishes at once
        // cannot resume the parent while we are still inside await_suspend.
        g_->remaining = N + 1;
        for (auto& c : children_) c.handle().resume();
        return --g_->remaining != 0;
    }
    void await_resume() const noexcept {}

private:
    group_base* g_;
    std::array<group_frame, N>& children_;
};

}  // namespace ringsock::detail
