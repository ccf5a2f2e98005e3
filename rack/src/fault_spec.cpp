// A drill spec's fault schedule, read and checked entry by entry (fault_spec.hpp, fault_parse.hpp).
//
// Each kind says which target it takes, whether `at` may be left out and what `duration_s` means:
//   kill-agent          host           duration: restarted after it (absent: never)
//   kill-orchestrator   (none)         duration: restarted on the same journal after it (absent: 0)
//   partition-host      host           duration: the link is down this long (required)
//   kill-fault-domain   fault_domain   no duration; `at` absent: before the walk (the old form)
//   guest-crash         instance       no duration
//   guest-hang          instance       no duration (the next stop of the guest)
//   slow-boot           instance       duration: the boot's delay (required)
//   corrupt-host-image  host           no duration (needs a host-os update)
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <type_traits>

#include "fault_parse.hpp"

namespace fabriclab::rack {

namespace {

struct KindRule {
  std::string target;  // "host" | "fault_domain" | "instance" | ""
  char duration;       // 'r' required, 'o' optional, 'n' not applicable
  bool at_optional;    // may run before the walk (no `at`)
};

const std::map<std::string, KindRule>& rules() {
  static const std::map<std::string, KindRule> r = {
      {"kill-agent", {"host", 'o', false}},      {"kill-orchestrator", {"", 'o', false}},
      {"partition-host", {"host", 'r', false}},  {"kill-fault-domain", {"fault_domain", 'n', true}},
      {"guest-crash", {"instance", 'n', false}}, {"guest-hang", {"instance", 'n', false}},
      {"slow-boot", {"instance", 'r', false}},   {"corrupt-host-image", {"host", 'n', false}},
  };
  return r;
}

Error bad(const std::string& path, const std::string& msg) {
  return make_error(Condition::invalid_argument, path + ": " + msg);
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

Status only(const YAML::Node& n, const std::string& path, const std::set<std::string>& allowed) {
  if (!n.IsMap()) return bad(path, "must be a mapping");
  for (const auto& kv : n) {
    auto key = kv.first.as<std::string>();
    if (!allowed.count(key)) return bad(path + "." + key, "unknown key");
  }
  return {};
}

// A YAML scalar of type T (int or double) in lo..hi (NaN is outside), or "PATH: must be an
// integer [in LO..HI]" / "PATH: must be a number" / "PATH: must be in LO..HI".
template <class T>
Result<T> scalar_in(const YAML::Node& n, const std::string& path, T lo, T hi) {
  constexpr bool kInt = std::is_integral_v<T>;
  T v{};
  try {
    v = n.as<T>();
  } catch (const YAML::Exception&) {
    return bad(path, kInt ? "must be an integer" : "must be a number");
  }
  if (!(v >= lo && v <= hi)) {
    return bad(path, fmt::format("must be {}in {}..{}", kInt ? "an integer " : "", lo, hi));
  }
  return v;
}

Result<double> number(const YAML::Node& n, const std::string& path, double lo, double hi) {
  return scalar_in(n, path, lo, hi);
}

Result<int> integer(const YAML::Node& n, const std::string& path, int lo, int hi) {
  return scalar_in(n, path, lo, hi);
}

Result<std::string> word(const YAML::Node& n, const std::string& path) {
  if (!n.IsScalar()) return bad(path, "must be a string");
  auto v = n.as<std::string>();
  if (v.empty() || v.size() > 64) return bad(path, "must be 1..64 characters");
  return v;
}

Status read_target(const YAML::Node& f, const std::string& p, const KindRule& rule,
                   const FaultRack& rack, FaultSpec& out) {
  auto t = f["target"];
  auto legacy = f["fault_domain"];
  if (legacy && out.kind != "kill-fault-domain") return bad(p + ".fault_domain", "unknown key");
  if (rule.target.empty()) {
    if (t) return bad(p + ".target", "does not apply to " + out.kind);
    return {};
  }
  if (legacy && t) return bad(p + ".fault_domain", "give either target or fault_domain, not both");
  if (legacy) {
    FL_ASSIGN_OR_RETURN(out.fault_domain,
                        integer(legacy, p + ".fault_domain", 0, rack.fault_domains - 1));
    out.target_kind = "fault_domain";
    out.target = std::to_string(out.fault_domain);
    return {};
  }
  if (!t) return bad(p + ".target", "is required: {" + rule.target + ": ...} for " + out.kind);
  FL_RETURN_IF_ERROR(only(t, p + ".target", {rule.target}));
  auto v = t[rule.target];
  if (!v) return bad(p + ".target", "must be {" + rule.target + ": ...} for " + out.kind);
  const std::string tp = p + ".target." + rule.target;
  out.target_kind = rule.target;
  if (rule.target == "fault_domain") {
    FL_ASSIGN_OR_RETURN(out.fault_domain, integer(v, tp, 0, rack.fault_domains - 1));
    out.target = std::to_string(out.fault_domain);
  } else if (rule.target == "host") {
    FL_ASSIGN_OR_RETURN(out.target, word(v, tp));
    bool known = false;
    for (int i = 0; i < rack.hosts; ++i) known = known || out.target == "h" + std::to_string(i);
    if (!known) {
      return bad(
          tp, fmt::format("'{}' is not a host of the rack (h0..h{})", out.target, rack.hosts - 1));
    }
  } else {
    FL_ASSIGN_OR_RETURN(out.target, word(v, tp));
    if (std::find(rack.instances.begin(), rack.instances.end(), out.target) ==
        rack.instances.end()) {
      std::vector<std::string> some(
          rack.instances.begin(),
          rack.instances.begin() + std::min<size_t>(rack.instances.size(), 8));
      return bad(tp, "'" + out.target + "' is not an instance of the spec's services (" +
                         joined(some) + (rack.instances.size() > 8 ? ", ..." : "") + ")");
    }
  }
  return {};
}

Status read_at(const YAML::Node& f, const std::string& p, const KindRule& rule, bool host_os,
               FaultSpec& out) {
  auto at = f["at"];
  if (!at) {
    if (rule.at_optional) return {};
    return bad(p + ".at", "is required: {batch: N, step: S} or {after_s: X}");
  }
  FL_RETURN_IF_ERROR(only(at, p + ".at", {"batch", "step", "after_s"}));
  if (at["after_s"]) {
    if (at["batch"] || at["step"])
      return bad(p + ".at", "give either after_s or batch (with step), not both");
    out.at.kind = FaultAt::Kind::after;
    FL_ASSIGN_OR_RETURN(out.at.after_s,
                        number(at["after_s"], p + ".at.after_s", 0, kMaxFaultAfterS));
    return {};
  }
  if (!at["batch"]) return bad(p + ".at", "needs batch (1..) or after_s");
  out.at.kind = FaultAt::Kind::batch;
  FL_ASSIGN_OR_RETURN(out.at.batch, integer(at["batch"], p + ".at.batch", 1, kMaxFaultBatch));
  if (auto s = at["step"]) {
    FL_ASSIGN_OR_RETURN(out.at.step, word(s, p + ".at.step"));
    const auto& steps = fault_steps();
    if (std::find(steps.begin(), steps.end(), out.at.step) == steps.end()) {
      return bad(p + ".at.step",
                 "must be one of " + joined(steps) + " (got '" + out.at.step + "')");
    }
    if (!host_os && (out.at.step == "SwappingImage" || out.at.step == "Rebooting")) {
      return bad(p + ".at.step", out.at.step + " happens only in a host-os update");
    }
  }
  return {};
}

Status read_one(const YAML::Node& f, const std::string& p, const FaultRack& rack, bool host_os,
                FaultSpec& out) {
  FL_RETURN_IF_ERROR(only(f, p, {"kind", "target", "fault_domain", "at", "duration_s"}));
  if (!f["kind"]) return bad(p + ".kind", "is required");
  FL_ASSIGN_OR_RETURN(out.kind, word(f["kind"], p + ".kind"));
  auto it = rules().find(out.kind);
  if (it == rules().end())
    return bad(p + ".kind",
               "must be one of " + joined(fault_kinds()) + " (got '" + out.kind + "')");
  const KindRule& rule = it->second;
  FL_RETURN_IF_ERROR(read_target(f, p, rule, rack, out));
  FL_RETURN_IF_ERROR(read_at(f, p, rule, host_os, out));
  if (auto d = f["duration_s"]) {
    if (rule.duration == 'n') return bad(p + ".duration_s", "does not apply to " + out.kind);
    FL_ASSIGN_OR_RETURN(double v, number(d, p + ".duration_s", 0, kMaxFaultDurationS));
    if (rule.duration == 'r' && v <= 0)
      return bad(p + ".duration_s", "must be more than 0 for " + out.kind);
    out.duration_s = v;
  } else if (rule.duration == 'r') {
    return bad(p + ".duration_s", "is required for " + out.kind);
  }
  if (out.kind == "corrupt-host-image" && !host_os) {
    return bad(
        p + ".kind",
        "corrupt-host-image needs a host-os update (the staged host image is what it breaks)");
  }
  return {};
}

}  // namespace

const std::vector<std::string>& fault_kinds() {
  static const std::vector<std::string> k = {
      "kill-agent",  "kill-orchestrator", "partition-host", "kill-fault-domain",
      "guest-crash", "guest-hang",        "slow-boot",      "corrupt-host-image"};
  return k;
}

const std::vector<std::string>& fault_steps() {
  static const std::vector<std::string> s = {"Notifying", "StoppingGuests", "SwappingImage",
                                             "Rebooting", "StartingGuests", "Verifying"};
  return s;
}

std::string FaultSpec::where() const {
  if (target_kind == "fault_domain") return "fault domain " + target;
  if (target_kind.empty()) return "orchestrator";
  return target;
}

std::string FaultSpec::describe() const {
  std::string s = kind + " " + where();
  switch (at.kind) {
    case FaultAt::Kind::before_walk:
      s += " before the walk";
      break;
    case FaultAt::Kind::batch:
      s += fmt::format(" at batch {}{}", at.batch, at.step.empty() ? "" : " " + at.step);
      break;
    case FaultAt::Kind::after:
      s += fmt::format(" at {:g} s", at.after_s);
      break;
  }
  if (duration_s) s += fmt::format(" for {:g} s", *duration_s);
  return s;
}

Status parse_faults(const YAML::Node& list, const FaultRack& rack, bool host_os,
                    std::vector<FaultSpec>& out) {
  if (!list.IsSequence()) return bad("faults", "must be a list");
  if (list.size() > kMaxFaults) return bad("faults", fmt::format("at most {} entries", kMaxFaults));
  out.clear();
  for (size_t i = 0; i < list.size(); ++i) {
    FaultSpec f;
    FL_RETURN_IF_ERROR(read_one(list[i], "faults[" + std::to_string(i) + "]", rack, host_os, f));
    out.push_back(std::move(f));
  }
  return {};
}

}  // namespace fabriclab::rack
