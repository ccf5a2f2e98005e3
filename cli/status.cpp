// fabriclab status: the UD x FD grid and the latest drill, once.
#include <boost/json.hpp>
#include <iostream>

#include "commands.hpp"
#include "fabriclab/client/render.hpp"

namespace fabriclab::cli {

int run_status(const Target& t, bool json_out) {
  auto api = connect_target(t);
  if (!api.ok()) return fail(exit_for(api.error()), api.error().message);
  auto hosts = api->get("/v1/hosts");
  auto inst = hosts.ok() ? api->get("/v1/instances") : hosts;
  auto drills = inst.ok() ? api->get("/v1/drills") : inst;
  if (!drills.ok()) return fail(kLabError, drills.error().message);
  if (json_out) {
    std::cout << json::serialize(
                     json::object{{"hosts", *hosts}, {"instances", *inst}, {"drills", *drills}})
              << "\n";
    return 0;
  }
  std::cout << client::render_grid(inst->as_array(), hosts->as_array());
  const auto& ds = drills->as_array();
  if (ds.empty()) {
    std::cout << "no drill yet\n";
  } else {
    std::cout << client::render_drill(ds.back().as_object());
  }
  return 0;
}

}  // namespace fabriclab::cli
