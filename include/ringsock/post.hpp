// Handing work to a loop from any thread: post(ctx, fn) runs a function on ctx's loop,
// spawn_on(ctx, task) starts a task there. The target loop is woken with
// IORING_OP_MSG_RING, through the posting thread's own ring when it runs one (the wake
// rides that ring's next enter), or without one (IORING_REGISTER_SEND_MSG_RING, Linux
// 6.13); where the kernel has neither, through the loop's eventfd. One wake covers
// every post made until the target's next turn.
#pragma once

#include <exception>
#include <type_traits>
#include <utility>

#include "detail/inbox.hpp"
#include "io_context.hpp"
#include "task.hpp"

namespace ringsock {
namespace detail {

template <class F>
struct posted_function final : posted_item {
    F fn;
    explicit posted_function(F f) : fn(std::move(f)) {}
    void run(scheduler& s) override {
        // Like a spawned task: an exception is rethrown from the target's run().
        try {
            fn();
        } catch (...) {
            s.record_detached_exception(std::current_exception());
        }
        delete this;
    }
    void discard() noexcept override { delete this; }
};

}  // namespace detail

/// Runs `fn()` on `ctx`'s loop thread, soon. Safe from any thread, including the loop's
/// own (then it runs on the next turn, never inline). Posts from one thread run in the
/// order they were made. An exception escaping `fn` is rethrown from the run() driving
/// `ctx`. If `ctx` is shutting down (its destructor or its pool's has begun), `fn` is
/// destroyed without running. `ctx` must stay alive until the posted work has run or
/// been discarded (a context_pool keeps its contexts until it is destroyed); run() must be driving it
/// (or be called later) for `fn` to run: a context_pool keeps its loops running.
/// Allocates one node per call (the function is moved into it).
template <class F>
void post(io_context& ctx, F&& fn) {
    using fn_type = std::decay_t<F>;
    static_assert(std::is_invocable_v<fn_type&>, "ringsock::post: fn must be callable with no arguments");
    detail::core(ctx).post(new detail::posted_function<fn_type>(std::forward<F>(fn)));
}

/// Starts `t` on `ctx`'s loop, detached, as io_context::spawn does; safe from any thread.
/// The task's frame was allocated by the caller; it runs only on `ctx`'s thread. If
/// `ctx` shuts down before starting it, the frame is destroyed unstarted.
inline void spawn_on(io_context& ctx, task<void> t) { detail::core(ctx).spawn_from_any_thread(std::move(t)); }

}  // namespace ringsock
