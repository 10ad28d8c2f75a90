// scope: a nursery for structured concurrency. Coroutines spawned into a scope run on
// its io_context; the scope can be asked to stop them all (through one stop token they
// pass to their operations) and awaited until every one of them has finished.
#pragma once

#include <coroutine>
#include <cstddef>
#include <exception>
#include <functional>
#include <stdexcept>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "detail/operation.hpp"
#include "detail/stop_forwarder.hpp"
#include "io_context.hpp"
#include "task.hpp"

namespace ringsock {

class scope;

namespace detail {

/// The frame of one child of a scope. The scope owns it: it is linked into the scope's
/// list while alive and destroys itself when the child finishes.
struct scope_child_promise;
struct scope_child {
    using promise_type = scope_child_promise;
    std::coroutine_handle<scope_child_promise> h;
};

struct scope_child_promise : resumable {
    scope* owner = nullptr;
    scope_child_promise* next_child = nullptr;
    scope_child_promise* prev_child = nullptr;

    scope_child get_return_object() noexcept {
        return {std::coroutine_handle<scope_child_promise>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    struct final_awaiter {
        bool await_ready() const noexcept { return false; }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<scope_child_promise> h) noexcept;
        void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() const noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }  // the bodies catch everything
    ~scope_child_promise();
};

}  // namespace detail

/// Spawns coroutines that share one stop token and can be awaited together:
///
///   ringsock::scope sc(ctx);
///   sc.spawn(handle(std::move(conn), sc.get_token()));   // the child passes the token on
///   ...
///   sc.request_stop();        // every operation given the token ends with operation_canceled
///   co_await sc.join();       // resumes once all children have finished
///
/// Children start on the next loop turn, never inside spawn(). The first exception that
/// escapes a child is kept and rethrown by join(); the other children keep running (a
/// child that wants its siblings stopped calls request_stop() itself).
///
/// Thread affinity: spawn(), join() and destruction on the io_context's thread;
/// request_stop() from any thread, provided the call has returned before the scope is
/// destroyed (join the requesting thread first).
///
/// Destruction: join() first. Destroying a scope whose children are still alive is safe
/// but abrupt: it requests stop, then destroys the children's frames, newest first. Each
/// operation still in flight is cancelled and its completion reaped before its memory is
/// freed (operation::settle drives the ring for that, without resuming any coroutine),
/// and a descriptor produced by a late completion (an accepted socket) is closed. The
/// children's code after their current co_await never runs, only their destructors, and
/// an exception kept for join() is dropped. A scope must be destroyed before its
/// io_context, and never from inside one of its own children.
class scope {
public:
    /// An empty scope whose children run on `ctx`.
    explicit scope(io_context& ctx) noexcept : ctx_(&ctx) {}
    /// A scope that also stops when `parent` does (e.g. an enclosing scope's token).
    scope(io_context& ctx, const std::stop_token& parent) : ctx_(&ctx), link_(parent, source_) {}
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;
    ~scope();

    /// Starts `t` as a child (on the next loop turn). The scope owns it until it ends.
    void spawn(task<void> t);
    /// Starts `f(get_token())` as a child. `f` is moved into the child's frame and lives
    /// as long as the child does, so a lambda's captures stay valid (which is not the
    /// case for spawn(lambda()) with a capturing coroutine lambda).
    template <class F>
        requires std::is_invocable_r_v<task<void>, F&, std::stop_token>
    void spawn(F f);

    /// Asks every child to stop: operations given get_token() end with
    /// operation_canceled. Safe from any thread; idempotent.
    void request_stop() noexcept { source_.request_stop(); }
    /// True once request_stop() was called (or the parent token was stopped).
    bool stop_requested() const noexcept { return source_.stop_requested(); }
    /// The token children pass to their operations (and to nested scopes).
    std::stop_token get_token() const noexcept { return source_.get_token(); }

    /// Number of children that have not finished.
    std::size_t size() const noexcept { return live_; }

    /// co_await: resumes when no child is alive, then rethrows the first exception a
    /// child let escape (once). Resumes at once if there are no children. One awaiter at
    /// a time (a second concurrent join() throws std::logic_error).
    [[nodiscard]] auto join() noexcept;

private:
    friend struct detail::scope_child_promise;
    class join_awaiter;

    void adopt(detail::scope_child child) noexcept;
    void record(std::exception_ptr e) noexcept {
        if (!error_) error_ = std::move(e);
    }
    void forget(detail::scope_child_promise* p) noexcept;
    std::coroutine_handle<> child_finished() noexcept {
        if (live_ == 0 && joiner_) return std::exchange(joiner_, {});
        return std::noop_coroutine();
    }

    static detail::scope_child run(scope* s, task<void> t);
    template <class F>
    static detail::scope_child run_fn(scope* s, F f);

    io_context* ctx_;
    std::stop_source source_;
    detail::stop_forwarder link_{std::stop_token{}, source_};
    detail::scope_child_promise* head_ = nullptr;  // newest child first
    std::size_t live_ = 0;
    std::coroutine_handle<> joiner_{};
    std::exception_ptr error_;
};

// Implementation only: what join() returns.
/// \cond
class scope::join_awaiter {
public:
    explicit join_awaiter(scope* s) noexcept : s_(s) {}
    join_awaiter(const join_awaiter&) = delete;
    join_awaiter& operator=(const join_awaiter&) = delete;
    ~join_awaiter() {
        // The awaiting frame is being destroyed while it waits: forget it.
        if (waiting_ && s_->joiner_ == waiting_) s_->joiner_ = {};
    }
    bool await_ready() const noexcept { return s_->live_ == 0; }
    void await_suspend(std::coroutine_handle<> h) {
        if (s_->joiner_) throw std::logic_error("ringsock: scope::join: already awaited by another coroutine");
        s_->joiner_ = h;
        waiting_ = h;
    }
    void await_resume() {
        waiting_ = {};
        if (s_->error_) std::rethrow_exception(std::exchange(s_->error_, nullptr));
    }

private:
    scope* s_;
    std::coroutine_handle<> waiting_{};
};
/// \endcond

inline auto scope::join() noexcept { return join_awaiter(this); }

namespace detail {

inline std::coroutine_handle<> scope_child_promise::final_awaiter::await_suspend(
    std::coroutine_handle<scope_child_promise> h) noexcept {
    scope* s = h.promise().owner;
    h.destroy();  // unlinks the child (see the promise's destructor)
    // TRICKY: symmetric transfer to the joiner, so nothing runs between the last child
    // ending and join() resuming (no new child can slip in unseen).
    return s->child_finished();
}

inline scope_child_promise::~scope_child_promise() {
    if (owner) owner->forget(this);
}

}  // namespace detail

inline scope::~scope() {
    if (live_ == 0) return;
    source_.request_stop();
    while (head_) {
        auto h = std::coroutine_handle<detail::scope_child_promise>::from_promise(*head_);
        h.destroy();  // settles the child's operations; the promise unlinks itself
    }
}

inline detail::scope_child scope::run(scope* s, task<void> t) {
    try {
        co_await std::move(t);
    } catch (...) {
        s->record(std::current_exception());
    }
}

template <class F>
detail::scope_child scope::run_fn(scope* s, F f) {
    try {
        co_await std::invoke(f, s->get_token());
    } catch (...) {
        s->record(std::current_exception());
    }
}

inline void scope::spawn(task<void> t) {
    if (!t.valid()) throw std::invalid_argument("ringsock: scope::spawn: empty task");
    adopt(run(this, std::move(t)));
}

template <class F>
    requires std::is_invocable_r_v<task<void>, F&, std::stop_token>
void scope::spawn(F f) {
    adopt(run_fn(this, std::move(f)));
}

inline void scope::adopt(detail::scope_child child) noexcept {
    auto& p = child.h.promise();
    p.owner = this;
    p.waiter_ = child.h;
    p.next_child = head_;
    if (head_) head_->prev_child = &p;
    head_ = &p;
    ++live_;
    detail::core(*ctx_).make_ready(&p);
    detail::core(*ctx_).add_work();
}

inline void scope::forget(detail::scope_child_promise* p) noexcept {
    if (p->prev_child) p->prev_child->next_child = p->next_child;
    else head_ = p->next_child;
    if (p->next_child) p->next_child->prev_child = p->prev_child;
    p->next_child = p->prev_child = nullptr;
    detail::core(*ctx_).unready(p);  // destroyed before it ever started
    --live_;
}

}  // namespace ringsock
