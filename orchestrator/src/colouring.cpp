// Graph colouring for the planner.
//
// DSatur gives a decent colouring in O(n^2) and is the baseline the issue measures against (about
// 3x the lower bound on UD-aligned clusters, 5-6x on arbitrary ones). The planner then tries to
// remove colours one at a time with TabuCol: fix k, start from the best colouring squeezed into k
// colours, and minimise the number of conflicting edges by single-node recolourings, forbidding
// for a while the colour a node just left (tenure = random(0..9) + 0.6 * conflicting nodes, as
// Galinier & Hao). A move that reaches a new best conflict count is taken even when tabu
// (aspiration). The search keeps, per node and colour, the number of neighbours of that colour
// (gamma), so a move costs O(degree) and choosing one costs O(conflicting nodes * k). Ties are
// broken with the caller's seeded generator, so the result is deterministic.

#include "colouring.hpp"

#include <algorithm>
#include <bit>
#include <map>
#include <string_view>
#include <unordered_map>

namespace fabriclab::orchestrator::detail {

Graph::Graph(int n) : words_((static_cast<size_t>(n) + 63) / 64), adj_(n) {
  bits_.assign(words_ * static_cast<size_t>(n), 0);
}

void Graph::add_edge(int a, int b) {
  if (a == b || edge(a, b)) return;
  bits_[static_cast<size_t>(a) * words_ + (b >> 6)] |= uint64_t{1} << (b & 63);
  bits_[static_cast<size_t>(b) * words_ + (a >> 6)] |= uint64_t{1} << (a & 63);
  adj_[a].push_back(b);
  adj_[b].push_back(a);
}

Graph conflict_graph(const Cluster& c) {
  std::unordered_map<std::string_view, int> host_index;
  for (size_t i = 0; i < c.hosts.size(); ++i)
    host_index.emplace(c.hosts[i].id, static_cast<int>(i));
  // service -> distinct (ud, host) pairs
  std::map<std::string_view, std::vector<std::pair<int, int>>> by_service;
  for (const auto& inst : c.instances) {
    auto it = host_index.find(inst.host);
    if (it != host_index.end()) by_service[inst.service].emplace_back(inst.ud, it->second);
  }
  Graph g(static_cast<int>(c.hosts.size()));
  for (auto& [name, pairs] : by_service) {
    std::sort(pairs.begin(), pairs.end());
    pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
    for (size_t a = 0; a < pairs.size(); ++a) {
      for (size_t b = a + 1; b < pairs.size(); ++b) {
        if (pairs[a].first != pairs[b].first) g.add_edge(pairs[a].second, pairs[b].second);
      }
    }
  }
  return g;
}

int colour_count(const std::vector<int>& colours) {
  int k = 0;
  for (int x : colours) k = std::max(k, x + 1);
  return k;
}

namespace {

int max_clique_small(const std::vector<uint64_t>& adj, uint64_t r_size, uint64_t p, uint64_t x,
                     int best) {
  if (p == 0 && x == 0) return std::max(best, static_cast<int>(r_size));
  if (static_cast<int>(r_size) + std::popcount(p) <= best) return best;
  const int pivot = std::countr_zero(p | x);
  uint64_t candidates = p & ~adj[pivot];
  while (candidates) {
    const int v = std::countr_zero(candidates);
    candidates &= candidates - 1;
    best = max_clique_small(adj, r_size + 1, p & adj[v], x & adj[v], best);
    p &= ~(uint64_t{1} << v);
    x |= uint64_t{1} << v;
  }
  return best;
}

}  // namespace

int clique_lower_bound(const Graph& g, int64_t max_search_nodes) {
  const int n = g.size();
  if (n == 0) return 0;
  if (n <= 64) {
    std::vector<uint64_t> adj(n);
    for (int v = 0; v < n; ++v) adj[v] = g.row(v)[0];
    const uint64_t all = n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1;
    return max_clique_small(adj, 0, all, 0, 1);
  }
  std::vector<int> order(n);
  for (int v = 0; v < n; ++v) order[v] = v;
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return g.neighbours(a).size() > g.neighbours(b).size(); });
  const size_t words = g.words();
  int best = 1;
  std::vector<uint64_t> cand(words);
  for (int s = 0; s < std::min(n, 32); ++s) {
    const int seed = order[s];
    std::copy(g.row(seed), g.row(seed) + words, cand.begin());
    int size = 1;
    for (;;) {
      // The candidate with the most neighbours among the candidates.
      int pick = -1, pick_score = -1;
      for (size_t w = 0; w < words; ++w) {
        for (uint64_t bits = cand[w]; bits; bits &= bits - 1) {
          const int v = static_cast<int>(w * 64) + std::countr_zero(bits);
          int score = 0;
          for (size_t k = 0; k < words; ++k) score += std::popcount(cand[k] & g.row(v)[k]);
          if (score > pick_score) pick = v, pick_score = score;
        }
      }
      if (pick < 0) break;
      ++size;
      for (size_t k = 0; k < words; ++k) cand[k] &= g.row(pick)[k];
    }
    best = std::max(best, size);
  }
  // Then branch and bound (MCQ, Tomita & Seki: a greedy colouring of the candidates bounds what
  // they can add) over the nodes relabelled by degree, highest first, which finds and proves the
  // maximum clique within a few thousand nodes on the dense conflict graphs of scattered
  // placements. Past max_search_nodes search nodes it stops with the best clique found so far.
  if (max_search_nodes <= 0) return best;
  const int64_t kMaxNodes = max_search_nodes;
  std::vector<int> rank(n);
  for (int i = 0; i < n; ++i) rank[order[i]] = i;
  std::vector<uint64_t> adj(static_cast<size_t>(n) * words, 0);
  for (int v = 0; v < n; ++v) {
    for (int w : g.neighbours(v)) {
      adj[static_cast<size_t>(rank[v]) * words + (rank[w] >> 6)] |= uint64_t{1} << (rank[w] & 63);
    }
  }
  int64_t nodes = 0;
  auto expand = [&](auto& self, std::vector<uint64_t> p, int size) -> void {
    if (++nodes > kMaxNodes) return;
    // Greedy colouring of p, class by class: bound_here[i] = colours used up to order_here[i].
    std::vector<int> order_here, bound_here;
    std::vector<uint64_t> left = p, q(words);
    for (int colour = 1;; ++colour) {
      bool any = false;
      q = left;
      for (size_t w = 0; w < words; ++w) {
        while (q[w]) {
          const int v = static_cast<int>(w * 64) + std::countr_zero(q[w]);
          any = true;
          q[w] &= q[w] - 1;
          left[w] &= ~(uint64_t{1} << (v & 63));
          const uint64_t* row = adj.data() + static_cast<size_t>(v) * words;
          for (size_t k = w; k < words; ++k) q[k] &= ~row[k];
          order_here.push_back(v);
          bound_here.push_back(colour);
        }
      }
      if (!any) break;
    }
    std::vector<uint64_t> next(words);
    for (int i = static_cast<int>(order_here.size()) - 1; i >= 0; --i) {
      if (size + bound_here[i] <= best || nodes > kMaxNodes) return;
      const int v = order_here[i];
      const uint64_t* row = adj.data() + static_cast<size_t>(v) * words;
      bool empty = true;
      for (size_t k = 0; k < words; ++k) {
        next[k] = p[k] & row[k];
        empty = empty && next[k] == 0;
      }
      if (empty)
        best = std::max(best, size + 1);
      else
        self(self, next, size + 1);
      p[v >> 6] &= ~(uint64_t{1} << (v & 63));
    }
  };
  std::vector<uint64_t> all(words, ~uint64_t{0});
  if (n % 64) all[words - 1] = (uint64_t{1} << (n % 64)) - 1;
  expand(expand, all, 0);
  return best;
}

std::vector<int> dsatur(const Graph& g) {
  const int n = g.size();
  std::vector<int> colour(n, -1), sat(n, 0);
  // seen[v]: which colours v's neighbours have, as a growing bitset.
  std::vector<std::vector<uint64_t>> seen(n);
  auto has = [&](int v, int c) {
    return static_cast<size_t>(c >> 6) < seen[v].size() && ((seen[v][c >> 6] >> (c & 63)) & 1);
  };
  for (int step = 0; step < n; ++step) {
    int v = -1;
    for (int i = 0; i < n; ++i) {
      if (colour[i] >= 0) continue;
      if (v < 0 || sat[i] > sat[v] ||
          (sat[i] == sat[v] && g.neighbours(i).size() > g.neighbours(v).size())) {
        v = i;
      }
    }
    int c = 0;
    while (has(v, c)) ++c;
    colour[v] = c;
    for (int w : g.neighbours(v)) {
      if (colour[w] >= 0 || has(w, c)) continue;
      if (seen[w].size() <= static_cast<size_t>(c >> 6)) seen[w].resize((c >> 6) + 1, 0);
      seen[w][c >> 6] |= uint64_t{1} << (c & 63);
      ++sat[w];
    }
  }
  return colour;
}

std::vector<int> squeeze(const Graph& g, std::vector<int> colours, int k) {
  std::vector<int> count(std::max(k, 1));
  for (int v = 0; v < g.size(); ++v) {
    if (colours[v] < k) continue;
    std::fill(count.begin(), count.end(), 0);
    for (int w : g.neighbours(v)) {
      if (colours[w] >= 0 && colours[w] < k) ++count[colours[w]];
    }
    colours[v] =
        static_cast<int>(std::min_element(count.begin(), count.begin() + k) - count.begin());
  }
  return colours;
}

TabuResult tabucol(const Graph& g, int k, std::vector<int> c, int64_t max_iterations,
                   std::mt19937_64& rng) {
  const int n = g.size();
  TabuResult out;
  if (k <= 0) return out;
  const size_t K = static_cast<size_t>(k);
  std::vector<int> gamma(static_cast<size_t>(n) * K, 0);
  std::vector<int64_t> tabu(static_cast<size_t>(n) * K, -1);
  long conflicts = 0;
  for (int v = 0; v < n; ++v) {
    for (int w : g.neighbours(v)) {
      ++gamma[v * K + c[w]];
      if (w > v && c[w] == c[v]) ++conflicts;
    }
  }
  // The conflicting nodes, as a list with positions for O(1) insert and erase.
  std::vector<int> list, pos(n, -1);
  auto refresh = [&](int v) {
    bool in = gamma[v * K + c[v]] > 0;
    if (in && pos[v] < 0) {
      pos[v] = static_cast<int>(list.size());
      list.push_back(v);
    } else if (!in && pos[v] >= 0) {
      int last = list.back();
      list[pos[v]] = last;
      pos[last] = pos[v];
      list.pop_back();
      pos[v] = -1;
    }
  };
  for (int v = 0; v < n; ++v) refresh(v);
  long best = conflicts;
  int64_t it = 0;
  for (; it < max_iterations && conflicts > 0; ++it) {
    int mv = -1, mc = -1, md = 0, ties = 0;
    for (int v : list) {
      const int cv = c[v];
      const int here = gamma[v * K + cv];
      for (int j = 0; j < k; ++j) {
        if (j == cv) continue;
        const int d = gamma[v * K + j] - here;
        if (tabu[v * K + j] > it && conflicts + d >= best) continue;
        if (mv < 0 || d < md) {
          mv = v, mc = j, md = d, ties = 1;
        } else if (d == md && std::uniform_int_distribution<int>(0, ties++)(rng) == 0) {
          mv = v, mc = j;
        }
      }
    }
    if (mv < 0) continue;  // every move tabu and none aspirating: let the tenures run out
    const int old = c[mv];
    c[mv] = mc;
    conflicts += md;
    for (int w : g.neighbours(mv)) {
      --gamma[w * K + old];
      ++gamma[w * K + mc];
      refresh(w);
    }
    refresh(mv);
    tabu[mv * K + old] = it + std::uniform_int_distribution<int>(0, 9)(rng) +
                         (6 * static_cast<int64_t>(list.size())) / 10;
    best = std::min(best, conflicts);
  }
  out.iterations = it;
  if (conflicts == 0) {
    out.found = true;
    out.colours = std::move(c);
  }
  return out;
}

}  // namespace fabriclab::orchestrator::detail
