// The planner.
//
// The walk is a colouring of the host conflict graph: hosts of one colour form a batch. Only
// hosts with a conflict take part in the colouring; the others (no instances, or only instances
// of services occupying one UD, such as single-instance ones) fit in any batch and are put in
// the last ones, which is also how multi-instance services "go first where it costs nothing".
// Colouring is NP-hard in general, but the clusters we meet are of three kinds, tried in order:
//
//   1. Placed by the allocator: every host with instances carries a UD slot, and the slots are a
//      proper colouring with exactly `lower bound` colours. Checking that costs one pass over the
//      edges, and the plan is optimal.
//   2. Aligned but without slots (imported from an allocator like ours): hosts holding the same
//      (service, UD) can always share a batch there, so we merge them (union-find) into
//      components. When no component contains a conflict, colouring the much smaller component
//      graph is easy and usually optimal.
//   3. Anything else (after healing, random valid placements): DSatur, then TabuCol trying one
//      colour fewer at a time until the lower bound or the iteration budget. After healing most
//      hosts still carry slots; those slots, squeezed to the bound, are the first start tried.
//
// The cap (max_parallel_hosts) is applied afterwards: each colour class is cut into full batches,
// the remainders of different classes are merged first-fit when they do not conflict, and the
// conflict-free hosts fill the room left from the last batch backwards.

#include "fabriclab/orchestrator/planner.hpp"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <unordered_map>

#include "colouring.hpp"

namespace fabriclab::orchestrator {
namespace {

using detail::Graph;

// Instances of services with at least two instances, per host: orders batches.
std::vector<int> multi_instance_weight(const Cluster& c) {
  std::unordered_map<std::string_view, int> per_service;
  for (const auto& i : c.instances) ++per_service[i.service];
  std::unordered_map<std::string_view, int> host_index;
  for (size_t i = 0; i < c.hosts.size(); ++i)
    host_index.emplace(c.hosts[i].id, static_cast<int>(i));
  std::vector<int> w(c.hosts.size(), 0);
  for (const auto& i : c.instances) {
    if (per_service[i.service] >= 2) ++w[host_index.at(i.host)];
  }
  return w;
}

// Cuts colour classes into batches of at most `cap` hosts (0: unlimited) and adds the hosts
// without a colour (conflict-free) at the end.
std::vector<std::vector<int>> assemble(const Cluster& c, const Graph& g,
                                       const std::vector<int>& colour, int cap) {
  const std::vector<int> weight = multi_instance_weight(c);
  std::map<int, std::vector<int>> classes;
  std::vector<int> free_hosts;
  for (int h = 0; h < static_cast<int>(colour.size()); ++h) {
    if (colour[h] < 0)
      free_hosts.push_back(h);
    else
      classes[colour[h]].push_back(h);
  }
  std::vector<std::vector<int>> batches, partial;
  for (auto& [col, hosts] : classes) {
    size_t i = 0;
    if (cap > 0) {
      for (; i + cap <= hosts.size(); i += cap)
        batches.emplace_back(hosts.begin() + i, hosts.begin() + i + cap);
    }
    if (i < hosts.size()) partial.emplace_back(hosts.begin() + i, hosts.end());
  }
  if (cap > 0) {
    std::stable_sort(partial.begin(), partial.end(),
                     [](const auto& a, const auto& b) { return a.size() > b.size(); });
    std::vector<std::vector<int>> bins;
    for (auto& p : partial) {
      auto fits = [&](const std::vector<int>& bin) {
        if (bin.size() + p.size() > static_cast<size_t>(cap)) return false;
        for (int a : bin) {
          for (int b : p) {
            if (g.edge(a, b)) return false;
          }
        }
        return true;
      };
      auto it = std::find_if(bins.begin(), bins.end(), fits);
      if (it == bins.end())
        bins.push_back(std::move(p));
      else
        it->insert(it->end(), p.begin(), p.end());
    }
    partial = std::move(bins);
  }
  batches.insert(batches.end(), partial.begin(), partial.end());
  auto total = [&](const std::vector<int>& b) {
    return std::accumulate(b.begin(), b.end(), 0, [&](int s, int h) { return s + weight[h]; });
  };
  std::stable_sort(batches.begin(), batches.end(),
                   [&](const auto& a, const auto& b) { return total(a) > total(b); });
  size_t next = 0;
  for (auto it = batches.rbegin(); it != batches.rend() && next < free_hosts.size(); ++it) {
    while (next < free_hosts.size() && (cap == 0 || it->size() < static_cast<size_t>(cap))) {
      it->push_back(free_hosts[next++]);
    }
  }
  while (next < free_hosts.size()) {
    std::vector<int> b;
    while (next < free_hosts.size() && (cap == 0 || b.size() < static_cast<size_t>(cap))) {
      b.push_back(free_hosts[next++]);
    }
    batches.push_back(std::move(b));
  }
  for (auto& b : batches) std::sort(b.begin(), b.end());
  return batches;
}

Plan to_plan(const Cluster& c, const std::vector<std::vector<int>>& batches, WalkBounds bounds,
             std::string method, int64_t iterations) {
  Plan p;
  for (const auto& b : batches) {
    auto& out = p.batches.emplace_back();
    for (int h : b) out.push_back(c.hosts[h].id);
  }
  p.lower_bound = bounds.overall;
  p.ud_lower_bound = bounds.ud;
  p.cap_lower_bound = bounds.cap;
  p.method = std::move(method);
  p.iterations = iterations;
  return p;
}

// The hosts' slots as colours, when they are a proper colouring of the conflicting hosts.
std::optional<std::vector<int>> slot_colouring(const Cluster& c, const Graph& g,
                                               const std::vector<int>& active) {
  std::vector<int> colour(c.hosts.size(), -1);
  std::set<int> distinct;
  for (int h : active) {
    if (!c.hosts[h].ud_slot) return std::nullopt;
    colour[h] = *c.hosts[h].ud_slot;
    distinct.insert(colour[h]);
  }
  for (int h : active) {
    for (int w : g.neighbours(h)) {
      if (colour[w] == colour[h]) return std::nullopt;
    }
  }
  return colour;
}

// Groups conflicting hosts holding the same (service, UD); nullopt when a group holds a conflict.
std::optional<std::vector<int>> components(const Cluster& c, const Graph& g,
                                           const std::vector<int>& node_of_host, int nodes) {
  std::vector<int> parent(nodes);
  std::iota(parent.begin(), parent.end(), 0);
  auto find = [&](int x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  std::unordered_map<std::string_view, int> host_index;
  for (size_t i = 0; i < c.hosts.size(); ++i)
    host_index.emplace(c.hosts[i].id, static_cast<int>(i));
  std::map<std::pair<std::string_view, int>, int> first;
  for (const auto& inst : c.instances) {
    int node = node_of_host[host_index.at(inst.host)];
    if (node < 0) continue;
    auto [it, fresh] = first.emplace(std::pair{std::string_view(inst.service), inst.ud}, node);
    if (!fresh) parent[find(node)] = find(it->second);
  }
  std::vector<int> comp(nodes);
  for (int v = 0; v < nodes; ++v) comp[v] = find(v);
  for (size_t h = 0; h < node_of_host.size(); ++h) {
    int v = node_of_host[h];
    if (v < 0) continue;
    for (int w : g.neighbours(static_cast<int>(h))) {
      if (comp[v] == comp[node_of_host[w]]) return std::nullopt;
    }
  }
  return comp;
}

}  // namespace

WalkBounds walk_bounds(const Cluster& c, int max_parallel_hosts) {
  std::map<std::string_view, std::set<int>> uds;
  for (const auto& i : c.instances) uds[i.service].insert(i.ud);
  WalkBounds b;
  for (const auto& [s, set] : uds) b.ud = std::max(b.ud, static_cast<int>(set.size()));
  const int hosts = static_cast<int>(c.hosts.size());
  if (max_parallel_hosts > 0) b.cap = (hosts + max_parallel_hosts - 1) / max_parallel_hosts;
  b.overall = std::max({b.ud, b.cap, hosts > 0 ? 1 : 0});
  return b;
}

Result<Plan> plan_walk(const Cluster& c, const PlanOptions& options) {
  FL_RETURN_IF_ERROR(validate_cluster(c));
  const int cap = std::max(options.max_parallel_hosts, 0);
  const WalkBounds bounds = walk_bounds(c, cap);
  const Graph g = detail::conflict_graph(c);
  std::vector<int> active, node_of_host(c.hosts.size(), -1);
  for (int h = 0; h < g.size(); ++h) {
    if (!g.neighbours(h).empty()) {
      node_of_host[h] = static_cast<int>(active.size());
      active.push_back(h);
    }
  }
  const int target = std::max(bounds.ud, 1);
  if (auto slots = slot_colouring(c, g, active); slots && detail::colour_count(*slots) <= target) {
    return to_plan(c, assemble(c, g, *slots, cap), bounds, "slots", 0);
  }

  // The conflicting hosts' own graph, and what no colouring of it can beat.
  const int n = static_cast<int>(active.size());
  Graph sub(n);
  for (int v = 0; v < n; ++v) {
    for (int u : g.neighbours(active[v])) sub.add_edge(v, node_of_host[u]);
  }
  // The greedy clique first; the (costlier) exact search only when the easy paths miss it.
  int clique = detail::clique_lower_bound(sub, 0);
  int stop = std::max(target, clique);

  std::mt19937_64 rng(options.seed);
  const int64_t budget = std::max<int64_t>(options.max_iterations, 0);
  int64_t spent = 0;
  // Removes one colour at a time while tabu search finds a colouring with one fewer. Each try
  // gets a share of the budget that grows with the graph, so small graphs give up quickly.
  auto improve = [&](const Graph& w, std::vector<int>& best) {
    int kb = detail::colour_count(best);
    while (kb > stop && spent < budget) {
      const int64_t tries = std::min<int64_t>(budget - spent, 100LL * w.size() * kb + 10000);
      auto r = detail::tabucol(w, kb - 1, detail::squeeze(w, best, kb - 1), tries, rng);
      spent += r.iterations;
      if (!r.found) break;
      best = std::move(r.colours);
      kb = detail::colour_count(best);
    }
  };

  std::string method = "search";
  std::vector<int> best = detail::dsatur(sub);
  if (auto comp = components(c, g, node_of_host, n)) {
    // Colour the component graph, then carry the colouring down to the hosts.
    std::map<int, int> renumber;
    std::vector<int> node_of(n);
    for (int v = 0; v < n; ++v) {
      node_of[v] = renumber.emplace((*comp)[v], static_cast<int>(renumber.size())).first->second;
    }
    Graph w(static_cast<int>(renumber.size()));
    for (int v = 0; v < n; ++v) {
      for (int u : sub.neighbours(v)) w.add_edge(node_of[v], node_of[u]);
    }
    std::vector<int> cw = detail::dsatur(w);
    improve(w, cw);
    if (detail::colour_count(cw) <= detail::colour_count(best)) {
      for (int v = 0; v < n; ++v) best[v] = cw[node_of[v]];
      method = "components";
    }
  }
  // After healing most hosts still carry their slot: that start, squeezed to the bound, is
  // usually a few moves from a colouring at the bound.
  if (detail::colour_count(best) > stop) {
    std::vector<int> start(n, target);
    std::map<int, int> slot_colour;
    bool any = false;
    for (int v = 0; v < n; ++v) {
      const auto& slot = c.hosts[active[v]].ud_slot;
      if (!slot) continue;
      any = true;
      start[v] = slot_colour.emplace(*slot, static_cast<int>(slot_colour.size())).first->second;
    }
    if (any) {
      const int64_t tries = std::min<int64_t>(budget - spent, 100LL * n * target + 10000);
      auto r = detail::tabucol(sub, target, detail::squeeze(sub, start, target), tries, rng);
      spent += r.iterations;
      if (r.found) best = std::move(r.colours), method = "search";
    }
  }
  if (detail::colour_count(best) > stop) {
    clique = detail::clique_lower_bound(sub);
    stop = std::max(target, clique);
  }
  improve(sub, best);
  std::vector<int> colour(c.hosts.size(), -1);
  for (int v = 0; v < n; ++v) colour[active[v]] = best[v];
  Plan plan = to_plan(c, assemble(c, g, colour, cap), bounds, method, spent);
  plan.clique_lower_bound = clique;
  return plan;
}

Result<Plan> plan_walk_dsatur(const Cluster& c, int max_parallel_hosts) {
  FL_RETURN_IF_ERROR(validate_cluster(c));
  const int cap = std::max(max_parallel_hosts, 0);
  const Graph g = detail::conflict_graph(c);
  std::vector<int> colour = detail::dsatur(g);
  for (int h = 0; h < g.size(); ++h) {
    if (g.neighbours(h).empty()) colour[h] = -1;
  }
  return to_plan(c, assemble(c, g, colour, cap), walk_bounds(c, cap), "dsatur", 0);
}

}  // namespace fabriclab::orchestrator
