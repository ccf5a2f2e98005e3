// The one translation unit that compiles Boost.JSON (header-only mode): the guest is linked
// statically and must not depend on a shared libboost_json.
#include <boost/json/src.hpp>
