// Drawing a live view in a terminal (terminal.hpp).
//
// The redraw is "carriage return, up N rows, erase to the end of the screen, print the frame".
// N is what the last frame took on the screen, wrapped lines included; a frame is written in one
// piece so the terminal never shows half of one. When the width changed since the last frame the
// terminal may or may not have rewrapped what it shows (tmux does, xterm does not), so N is not
// known: the screen is cleared and the frame drawn from its top.
#include "fabriclab/client/terminal.hpp"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>

namespace fabriclab::client {

namespace {

bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Columns a line (no '\n') takes: one per code point, none for control characters.
int columns_of(std::string_view line) {
  int n = 0;
  for (char c : line) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || is_continuation(c)) continue;
    ++n;
  }
  return n;
}

int rows_of_line(std::string_view line, int columns) {
  int w = columns_of(line);
  if (columns <= 0 || w == 0) return 1;
  return (w + columns - 1) / columns;
}

// The longest prefix of `line` that takes at most `columns` columns, cut between code points.
std::string_view prefix_columns(std::string_view line, int columns) {
  int n = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    auto u = static_cast<unsigned char>(line[i]);
    if (u < 0x20 || u == 0x7f || is_continuation(line[i])) continue;
    if (n == columns) return line.substr(0, i);
    ++n;
  }
  return line;
}

// Calls f(line) for each line of `text`; a final '\n' ends the last line.
template <typename F>
void for_each_line(std::string_view text, F&& f) {
  while (!text.empty()) {
    size_t nl = text.find('\n');
    if (nl == std::string_view::npos) {
      f(text);
      return;
    }
    f(text.substr(0, nl));
    text.remove_prefix(nl + 1);
  }
}

}  // namespace

std::optional<TerminalSize> terminal_size(int fd) {
  winsize ws{};
  if (!isatty(fd) || ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0 || ws.ws_row == 0) {
    return std::nullopt;
  }
  return TerminalSize{ws.ws_col, ws.ws_row};
}

int screen_rows(std::string_view text, int columns) {
  int rows = 0;
  for_each_line(text, [&](std::string_view line) { rows += rows_of_line(line, columns); });
  return rows;
}

std::string fit_frame(std::string_view frame, int columns, int max_rows) {
  std::string whole(frame);
  if (whole.empty() || whole.back() != '\n') whole += '\n';
  if (columns <= 0 || max_rows < 2 || screen_rows(whole, columns) <= max_rows) return whole;
  std::string out;
  int used = 0, left_out = 0;
  for_each_line(whole, [&](std::string_view line) {
    int rows = rows_of_line(line, columns);
    if (left_out == 0 && used + rows <= max_rows - 1) {
      out.append(line).append("\n");
      used += rows;
    } else if (used == 0) {
      // A single line taller than the screen (a very narrow window): as much of it as fits.
      out.append(prefix_columns(line, (max_rows - 1) * columns)).append("\n");
      used = max_rows - 1;
    } else {
      ++left_out;
    }
  });
  std::string note = left_out > 0 ? fmt::format("... {} more line{} (a larger terminal shows them)",
                                                left_out, left_out == 1 ? "" : "s")
                                  : std::string("... (cut: a larger terminal shows it all)");
  out.append(prefix_columns(note, columns)).append("\n");
  return out;
}

LiveRegion::LiveRegion(std::ostream& out, bool redraw, SizeFn size)
    : out_(out), redraw_(redraw), size_(std::move(size)) {}

void LiveRegion::draw(std::string_view frame) {
  if (!redraw_) {
    std::string text(frame);
    if (text.empty() || text.back() != '\n') text += '\n';
    out_ << text << std::flush;
    return;
  }
  std::optional<TerminalSize> size = size_ ? size_() : std::nullopt;
  int columns = size ? size->columns : 0;
  std::string text = fit_frame(frame, columns, size ? size->rows - 1 : 0);
  std::string move;
  if (drawn_rows_ > 0 && columns != drawn_columns_) {
    move = "\x1b[H\x1b[2J";
  } else if (drawn_rows_ > 0) {
    move = fmt::format("\r\x1b[{}A\x1b[J", drawn_rows_);
  }
  out_ << move << text << std::flush;
  drawn_rows_ = screen_rows(text, columns);
  drawn_columns_ = columns;
}

}  // namespace fabriclab::client
