#include "fabriclab/orchestrator/drill_spec.hpp"

#include <boost/describe.hpp>
#include <boost/json.hpp>

#include "fabriclab/orchestrator/cluster.hpp"

namespace fabriclab::orchestrator {
namespace {
constexpr std::string_view kDrillStates[] = {"Planned",   "Running", "Paused",
                                             "Completed", "Failed",  "Aborted"};
}  // namespace

std::string_view to_string(DrillState s) { return kDrillStates[static_cast<int>(s)]; }

Result<DrillState> parse_drill_state(std::string_view s, std::string_view field) {
  return enum_from_name<DrillState>(kDrillStates, s, field);
}

Result<DrillSpec> drill_spec_from_json(const json::object& o) {
  FL_RETURN_IF_ERROR(check_fields(
      o, {"kind", "target", "max_parallel_hosts", "time_scale", "recovery_s", "notice_s",
          "freeze_s", "healthy_timeout_s", "memory_preserving", "start_paused"}));
  DrillSpec s;
  FL_ASSIGN_OR_RETURN(s.kind, get_string(o, "kind", 16));
  if (s.kind != "host-os" && s.kind != "guest-os" && s.kind != "freeze") {
    return make_error(
        Condition::invalid_argument,
        "field 'kind' must be one of host-os, guest-os, freeze (got '" + s.kind + "')");
  }
  FL_ASSIGN_OR_RETURN(s.target, get_string(o, "target", kMaxNameBytes, s.kind != "freeze"));
  FL_ASSIGN_OR_RETURN(auto mp,
                      get_int_or(o, "max_parallel_hosts", 0, static_cast<int64_t>(kMaxHosts), 0));
  s.max_parallel_hosts = static_cast<int>(mp);
  FL_ASSIGN_OR_RETURN(s.time_scale, get_number_or(o, "time_scale", 1e-6, 1.0, 1.0));
  FL_ASSIGN_OR_RETURN(s.recovery_s, get_number_or(o, "recovery_s", 0, 7 * 86400, 1800));
  FL_ASSIGN_OR_RETURN(s.notice_s, get_number_or(o, "notice_s", 0, 86400, 900));
  FL_ASSIGN_OR_RETURN(s.freeze_s, get_number_or(o, "freeze_s", 0, 3600, 5));
  FL_ASSIGN_OR_RETURN(s.healthy_timeout_s, get_number_or(o, "healthy_timeout_s", 1, 86400, 600));
  FL_ASSIGN_OR_RETURN(s.memory_preserving, get_bool_or(o, "memory_preserving", false));
  FL_ASSIGN_OR_RETURN(s.start_paused, get_bool_or(o, "start_paused", false));
  return s;
}

// The wire form is every field under its own name, in declaration order (Boost.JSON's
// value_from of a described struct).
BOOST_DESCRIBE_STRUCT(DrillSpec, (),
                      (kind, target, max_parallel_hosts, time_scale, recovery_s, notice_s, freeze_s,
                       healthy_timeout_s, memory_preserving, start_paused))

json::object to_json(const DrillSpec& s) { return json::value_from(s).as_object(); }

}  // namespace fabriclab::orchestrator
