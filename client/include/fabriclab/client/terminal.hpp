#pragma once
// Drawing a live view in a terminal: a frame of plain text redrawn in place, below whatever was
// printed before it (`fabriclab watch`, the drill command's progress).
//
// Redrawing in place means moving the cursor back to the frame's first row and clearing to the
// end of the screen, so the count of rows the last frame took must be exact: a line wider than
// the terminal wraps onto more rows than its one '\n' says (the grid's hosts line is 151 columns
// on the default rack, so a 140-column terminal used to keep one stale row per redraw). A frame
// taller than the screen cannot be redrawn in place (its top has scrolled off), so it is cut to
// the screen's height, with a last line that says how much is hidden.
//
// Frames are plain text: printable ASCII or UTF-8 (each code point one column), '\t' to the next
// multiple of 8, '\n' between lines; no escape sequences of their own.

#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

namespace fabriclab::client {

struct TerminalSize {
  int columns = 0;
  int rows = 0;
};

// The size of the terminal on `fd` (TIOCGWINSZ); nullopt when `fd` is not a terminal or says 0.
std::optional<TerminalSize> terminal_size(int fd);

// The rows `text` takes when printed from column 0 of a terminal `columns` wide that wraps long
// lines (as xterm, VTE and tmux do: a line of exactly `columns` characters and its '\n' take one
// row), counting the row the cursor ends on only when the text does not end with '\n' (the
// cursor then sits on it). columns <= 0: no wrapping (one row per line).
int screen_rows(std::string_view text, int columns);

// `frame` cut so that it takes at most `max_rows` rows at `columns` (see screen_rows), ending
// with '\n'; when lines are left out its last row says "... N more lines (a larger terminal shows
// them)". max_rows < 2 or columns <= 0: the frame, with a '\n' appended when it lacks one.
std::string fit_frame(std::string_view frame, int columns, int max_rows);

// A frame redrawn in place on `out`. With redraw off (not a terminal: a log, a pipe) each frame
// is printed after the last. `size` is asked before each frame (the window may have been resized;
// nullopt: unknown, then rows are counted without wrapping and nothing is cut).
class LiveRegion {
 public:
  using SizeFn = std::function<std::optional<TerminalSize>()>;
  LiveRegion(std::ostream& out, bool redraw, SizeFn size);

  // Replaces the previous frame with `frame` (a '\n' is appended when it lacks one).
  void draw(std::string_view frame);
  // Something else was printed below the frame: the next one starts below that, not over it.
  void forget() { drawn_rows_ = 0; }

 private:
  std::ostream& out_;
  bool redraw_;
  SizeFn size_;
  int drawn_rows_ = 0;     // rows the last frame took, the cursor now on the row below them
  int drawn_columns_ = 0;  // the width it was drawn at
};

}  // namespace fabriclab::client
