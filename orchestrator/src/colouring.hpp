#pragma once
// Private to the planner: the host conflict graph and graph colourings over it.

#include <cstdint>
#include <random>
#include <vector>

#include "fabriclab/common/result.hpp"
#include "fabriclab/orchestrator/cluster.hpp"

namespace fabriclab::orchestrator::detail {

// A simple undirected graph with an adjacency matrix for O(1) edge tests.
class Graph {
 public:
  explicit Graph(int n = 0);
  int size() const { return static_cast<int>(adj_.size()); }
  void add_edge(int a, int b);  // idempotent; no self loops
  bool edge(int a, int b) const {
    return (bits_[static_cast<size_t>(a) * words_ + (b >> 6)] >> (b & 63)) & 1;
  }
  const std::vector<int>& neighbours(int v) const { return adj_[v]; }
  const uint64_t* row(int v) const { return bits_.data() + static_cast<size_t>(v) * words_; }
  size_t words() const { return words_; }

 private:
  size_t words_ = 0;
  std::vector<uint64_t> bits_;
  std::vector<std::vector<int>> adj_;
};

// The conflict graph over cluster.hosts (node i = hosts[i]). Assumes validate_cluster passed.
Graph conflict_graph(const Cluster& c);

// DSatur: most saturated node first (ties: higher degree, then lower index), smallest free
// colour. Returns colours 0..k-1.
std::vector<int> dsatur(const Graph& g);

int colour_count(const std::vector<int>& colours);

// The size of a clique (pairwise-adjacent nodes) of `g`: every colouring needs at least that many
// colours. Exact for graphs of up to 64 nodes (Bron-Kerbosch with pivoting). Beyond, greedy from
// the highest-degree nodes, then a branch and bound of at most `max_search_nodes` nodes (0: the
// greedy clique only), exact when it completes (within ~2000 nodes on 160-host scattered
// placements; ~1-5 us a node).
int clique_lower_bound(const Graph& g, int64_t max_search_nodes = 20'000);

// TabuCol (Hertz & de Werra; tenure as Galinier & Hao): looks for a proper colouring with `k`
// colours from `start` (colours in 0..k-1, conflicts allowed) by moving one conflicting node at a
// time to its least-conflicting colour, with a tabu list against cycling. Returns the colouring
// when it reaches zero conflicts within `max_iterations` moves.
struct TabuResult {
  bool found = false;
  std::vector<int> colours;
  int64_t iterations = 0;
};
TabuResult tabucol(const Graph& g, int k, std::vector<int> start, int64_t max_iterations,
                   std::mt19937_64& rng);

// `colours` with every node of colour >= k moved to its least-conflicting colour below k.
std::vector<int> squeeze(const Graph& g, std::vector<int> colours, int k);

}  // namespace fabriclab::orchestrator::detail
