#include "fabriclab/common/result.hpp"

#include <ostream>

namespace fabriclab {

std::string_view to_string(Condition c) {
  switch (c) {
    case Condition::invalid_argument:
      return "invalid_argument";
    case Condition::not_found:
      return "not_found";
    case Condition::already_exists:
      return "already_exists";
    case Condition::invalid_state:
      return "invalid_state";
    case Condition::unsupported:
      return "unsupported";
    case Condition::timeout:
      return "timeout";
    case Condition::transient:
      return "transient";
    case Condition::cancelled:
      return "cancelled";
    case Condition::unauthenticated:
      return "unauthenticated";
    case Condition::permission_denied:
      return "permission_denied";
    case Condition::internal:
      return "internal";
  }
  return "internal";
}

std::string Error::describe() const {
  std::string out(to_string(condition));
  out += ": ";
  out += message;
  return out;
}

}  // namespace fabriclab

namespace fabriclab {
std::ostream& operator<<(std::ostream& os, Condition c) { return os << to_string(c); }
}  // namespace fabriclab
