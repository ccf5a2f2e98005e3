#pragma once
// Errors as values. Expected failures (a VM that does not stop, an unknown domain, a bad request)
// travel as `Error` inside `Result<T>`; callers branch on the small set of `Condition`s and show
// the message to people. Exceptions are kept for start-up/config and as the last net around a
// thread or coroutine.

#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace fabriclab {

// The conditions callers branch on. Keep the set small: a new one is a contract change.
enum class Condition {
  invalid_argument,   // the request or input is malformed; retrying the same input will not help
  not_found,          // the named thing does not exist
  already_exists,     // creating something that exists
  invalid_state,      // the thing exists but is in the wrong state for the operation
  unsupported,        // the driver or configuration cannot do this
  timeout,            // a deadline passed
  transient,          // a connection or system failure; retrying may help
  cancelled,          // the operation was cancelled on purpose
  unauthenticated,    // no or unknown credentials
  permission_denied,  // credentials are valid but not allowed to do this
  internal,           // a bug or an unclassified failure
};

std::string_view to_string(Condition c);
std::ostream& operator<<(std::ostream& os, Condition c);

struct Error {
  Condition condition = Condition::internal;
  std::string message;

  // "not_found: domain 'x' not found"
  std::string describe() const;
};

inline Error make_error(Condition c, std::string message) { return Error{c, std::move(message)}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { return std::get<1>(v_); }
  Condition condition() const { return error().condition; }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}

  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *error_; }
  Condition condition() const { return error_->condition; }

 private:
  std::optional<Error> error_;
};

using Status = Result<void>;

}  // namespace fabriclab

#define FL_CONCAT_INNER(a, b) a##b
#define FL_CONCAT(a, b) FL_CONCAT_INNER(a, b)

// Returns the error of a failed Status/Result from the enclosing function.
#define FL_RETURN_IF_ERROR(expr)                     \
  do {                                               \
    auto fl_status_ = (expr);                        \
    if (!fl_status_.ok()) return fl_status_.error(); \
  } while (0)

// `FL_ASSIGN_OR_RETURN(auto x, f());` binds the value or returns the error.
#define FL_ASSIGN_OR_RETURN(lhs, expr) \
  FL_ASSIGN_OR_RETURN_IMPL(FL_CONCAT(fl_result_, __LINE__), lhs, expr)
#define FL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.error();             \
  lhs = std::move(tmp).value()
