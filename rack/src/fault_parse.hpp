#pragma once
// Private: the `faults:` list of a drill spec, read from its YAML node (fault_spec.hpp says what
// each entry holds and which checks apply). Kept apart from spec.cpp so the schedule's rules live
// in one file.

#include <yaml-cpp/yaml.h>

#include <vector>

#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/fault_spec.hpp"

namespace fabriclab::rack {

// Reads every entry of `list` (a YAML sequence) into `out`; errors name the entry and key.
// `host_os`: some update of the spec is a host-os update (corrupt-host-image and the steps
// SwappingImage and Rebooting need one).
Status parse_faults(const YAML::Node& list, const FaultRack& rack, bool host_os,
                    std::vector<FaultSpec>& out);

}  // namespace fabriclab::rack
