// when_all: run several tasks concurrently and wait for all of them.
#pragma once

#include <array>
#include <cstddef>
#include <exception>
#include <optional>
#include <stop_token>
#include <tuple>
#include <utility>

#include "detail/stop_forwarder.hpp"
#include "detail/when_group.hpp"
#include "task.hpp"

namespace ringsock {

namespace detail {

template <class... R>
struct all_state : group_base {
    std::tuple<std::optional<R>...> results;
    std::exception_ptr error;
    std::stop_source* source = nullptr;
};

template <std::size_t I, class T, class State>
group_child run_all_child(task<T> t, State* st) {
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(t);
            std::get<I>(st->results).emplace();
        } else {
            std::get<I>(st->results).emplace(co_await std::move(t));
        }
    } catch (...) {
        if (!st->error) st->error = std::current_exception();
        st->source->request_stop();  // fail fast: the siblings' operations are cancelled
    }
}

}  // namespace detail

/// Runs the children concurrently on the current loop and yields a std::tuple of their
/// results (std::monostate for task<void>), in argument order. A child is a task<T> or a
/// callable taking std::stop_token and returning task<T>; a callable is given a token
/// that is stopped when a child throws or when `parent` is stopped, and is kept alive
/// until its task ends. If a child throws, the others are asked to stop, and the first
/// exception is rethrown once every child has finished. The combinator never resumes
/// before all children have finished; destroying it while they run destroys them, which
/// cancels and settles their operations.
///
///   auto [a, b] = co_await ringsock::when_all(read_header(sock), fetch(ctx));
///
/// Pass callables by value (capture what they need); they are moved in.
template <class... A>
    requires(detail::group_child_arg<A> && ...)
task<std::tuple<detail::group_child_value_t<A>...>> when_all(std::stop_token parent, A... args) {
    std::stop_source source;
    detail::stop_forwarder link(parent, source);
    detail::all_state<detail::group_child_value_t<A>...> st;
    st.source = &source;
    {
        std::stop_token token = source.get_token();
        auto children = [&]<std::size_t... I>(std::index_sequence<I...>) {
            return std::array<detail::group_frame, sizeof...(A)>{
                detail::group_frame(detail::run_all_child<I>(detail::make_group_task(args, token), &st), &st)...};
        }(std::index_sequence_for<A...>{});
        detail::group_awaiter<sizeof...(A)> all(&st, children);
        co_await all;
    }
    if (st.error) std::rethrow_exception(st.error);
    co_return std::apply([](auto&... r) { return std::tuple<detail::group_child_value_t<A>...>(std::move(*r)...); },
                         st.results);
}

/// when_all without a parent token.
template <class... A>
    requires(detail::group_child_arg<A> && ...)
task<std::tuple<detail::group_child_value_t<A>...>> when_all(A... args) {
    return when_all(std::stop_token{}, std::move(args)...);
}

}  // namespace ringsock
