#pragma once
// A small screen model for tests: a VT100/xterm subset that replays what a program wrote to its
// terminal and shows the screen a user would see. It knows what the live views emit and a little
// more: printable text and UTF-8 (one column per code point), CR, LF (scrolls at the bottom; the
// scrolled-off rows are gone), BS, TAB, line wrap at the right margin as xterm does it (a line of
// exactly `columns` characters leaves the cursor on its last column until the next character),
// CSI A/B/C/D (cursor up/down/right/left), E/F (next/previous line), G (column), H/f (position),
// J (erase in display 0/1/2/3), K (erase in line 0/1/2), m (attributes, ignored), ?Nh/?Nl (modes,
// ignored), ESC 7/8 (save/restore the cursor). Any other escape is recorded in unknown(), so a
// test can assert that the program emitted nothing the model cannot replay.
//
// Bytes written to a terminal reach the screen after the tty's output processing; a program's
// "\n" becomes "\r\n" (ONLCR). Feed what a pty master reads as is; for text written to a string
// stream, use feed_as_tty().

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace fabriclab::testing {

class ScreenModel {
 public:
  ScreenModel(int columns, int rows) : columns_(columns), rows_(rows) {
    cells_.assign(static_cast<size_t>(rows_), blank_row());
  }

  int columns() const { return columns_; }
  int rows() const { return rows_; }
  int cursor_row() const { return row_; }
  int cursor_column() const { return col_; }
  const std::vector<std::string>& unknown() const { return unknown_; }

  // Bytes as the terminal receives them.
  void feed(std::string_view bytes) {
    for (char c : bytes) step(c);
  }

  // Bytes as a program writes them to a tty with ONLCR ("\n" reaches the screen as "\r\n").
  void feed_as_tty(std::string_view text) {
    for (char c : text) {
      if (c == '\n') step('\r');
      step(c);
    }
  }

  // A resize as xterm does it: the rows keep their text (cut or padded), nothing rewraps; the
  // cursor stays (clamped).
  void resize(int columns, int rows) {
    for (auto& r : cells_) r.resize(static_cast<size_t>(columns), " ");
    while (static_cast<int>(cells_.size()) > rows) cells_.erase(cells_.begin());
    columns_ = columns;
    while (static_cast<int>(cells_.size()) < rows) cells_.push_back(blank_row());
    rows_ = rows;
    row_ = std::min(row_, rows_ - 1);
    col_ = std::min(col_, columns_ - 1);
    pending_wrap_ = false;
  }

  // Screen row `r` as text, trailing blanks removed.
  std::string line(int r) const {
    std::string s;
    for (const auto& cell : cells_[static_cast<size_t>(r)]) s += cell;
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
  }

  // The whole screen, one line per row, trailing blank rows removed.
  std::string text() const {
    std::vector<std::string> lines;
    for (int r = 0; r < rows_; ++r) lines.push_back(line(r));
    while (!lines.empty() && lines.back().empty()) lines.pop_back();
    std::string s;
    for (const auto& l : lines) s += l + "\n";
    return s;
  }

  // Rows whose text starts with `prefix`.
  int rows_starting_with(std::string_view prefix) const {
    int n = 0;
    for (int r = 0; r < rows_; ++r) n += line(r).rfind(prefix, 0) == 0 ? 1 : 0;
    return n;
  }

  // Rows whose text contains `needle`.
  int rows_containing(std::string_view needle) const {
    int n = 0;
    for (int r = 0; r < rows_; ++r) n += line(r).find(needle) != std::string::npos ? 1 : 0;
    return n;
  }

 private:
  enum class State { text, esc, csi };

  std::vector<std::string> blank_row() const {
    return std::vector<std::string>(static_cast<size_t>(columns_), " ");
  }

  void step(char c) {
    auto u = static_cast<unsigned char>(c);
    switch (state_) {
      case State::esc:
        if (c == '[') {
          state_ = State::csi;
          params_.clear();
        } else {
          if (c == '7') {
            saved_row_ = row_;
            saved_col_ = col_;
          } else if (c == '8') {
            row_ = saved_row_;
            col_ = saved_col_;
            pending_wrap_ = false;
          } else {
            unknown_.push_back(std::string("ESC ") + c);
          }
          state_ = State::text;
        }
        return;
      case State::csi:
        if (u >= 0x40 && u <= 0x7e) {
          csi(c);
          state_ = State::text;
        } else if (params_.size() < 64) {
          params_ += c;
        }
        return;
      case State::text:
        break;
    }
    if (c == '\x1b') {
      state_ = State::esc;
    } else if (c == '\r') {
      col_ = 0;
      pending_wrap_ = false;
    } else if (c == '\n') {
      line_feed();
      pending_wrap_ = false;
    } else if (c == '\b') {
      col_ = std::max(0, col_ - 1);
      pending_wrap_ = false;
    } else if (c == '\t') {
      col_ = std::min(columns_ - 1, (col_ / 8 + 1) * 8);
    } else if (u < 0x20 || u == 0x7f) {
      // other controls (BEL, ...) move nothing
    } else if ((u & 0xC0) == 0x80) {
      // a UTF-8 continuation: part of the character just written
      int c0 = pending_wrap_ ? col_ : std::max(0, col_ - 1);
      cells_[static_cast<size_t>(row_)][static_cast<size_t>(c0)] += c;
    } else {
      put(c);
    }
  }

  void put(char c) {
    if (pending_wrap_) {
      col_ = 0;
      line_feed();
      pending_wrap_ = false;
    }
    cells_[static_cast<size_t>(row_)][static_cast<size_t>(col_)] = std::string(1, c);
    if (col_ == columns_ - 1) {
      pending_wrap_ = true;
    } else {
      ++col_;
    }
  }

  void line_feed() {
    if (row_ < rows_ - 1) {
      ++row_;
    } else {
      cells_.erase(cells_.begin());
      cells_.push_back(blank_row());
    }
  }

  int param(size_t i, int fallback) const {
    std::vector<std::string> parts{""};
    for (char ch : params_) {
      if (ch == ';') {
        parts.emplace_back();
      } else {
        parts.back() += ch;
      }
    }
    if (i >= parts.size() || parts[i].empty()) return fallback;
    return std::atoi(parts[i].c_str());
  }

  void erase(int r, int from, int to) {  // [from, to)
    for (int k = from; k < to; ++k) cells_[static_cast<size_t>(r)][static_cast<size_t>(k)] = " ";
  }

  void csi(char final) {
    if (!params_.empty() && params_[0] == '?') {
      if (final != 'h' && final != 'l') unknown_.push_back("CSI " + params_ + final);
      return;
    }
    int n = std::max(1, param(0, 1));
    switch (final) {
      case 'A':
        row_ = std::max(0, row_ - n);
        break;
      case 'B':
        row_ = std::min(rows_ - 1, row_ + n);
        break;
      case 'C':
        col_ = std::min(columns_ - 1, col_ + n);
        break;
      case 'D':
        col_ = std::max(0, col_ - n);
        break;
      case 'E':
        row_ = std::min(rows_ - 1, row_ + n);
        col_ = 0;
        break;
      case 'F':
        row_ = std::max(0, row_ - n);
        col_ = 0;
        break;
      case 'G':
        col_ = std::clamp(n - 1, 0, columns_ - 1);
        break;
      case 'H':
      case 'f':
        row_ = std::clamp(std::max(1, param(0, 1)) - 1, 0, rows_ - 1);
        col_ = std::clamp(std::max(1, param(1, 1)) - 1, 0, columns_ - 1);
        break;
      case 'J': {
        int mode = param(0, 0);
        if (mode == 0) {
          erase(row_, col_, columns_);
          for (int r = row_ + 1; r < rows_; ++r) erase(r, 0, columns_);
        } else if (mode == 1) {
          for (int r = 0; r < row_; ++r) erase(r, 0, columns_);
          erase(row_, 0, col_ + 1);
        } else {
          for (int r = 0; r < rows_; ++r) erase(r, 0, columns_);
        }
        break;
      }
      case 'K': {
        int mode = param(0, 0);
        if (mode == 0) erase(row_, col_, columns_);
        if (mode == 1) erase(row_, 0, col_ + 1);
        if (mode == 2) erase(row_, 0, columns_);
        break;
      }
      case 'm':
        return;  // attributes: no movement, the wrap stays pending
      default:
        unknown_.push_back("CSI " + params_ + final);
        return;
    }
    pending_wrap_ = false;
  }

  int columns_, rows_;
  std::vector<std::vector<std::string>> cells_;
  int row_ = 0, col_ = 0;
  int saved_row_ = 0, saved_col_ = 0;
  bool pending_wrap_ = false;
  State state_ = State::text;
  std::string params_;
  std::vector<std::string> unknown_;
};

}  // namespace fabriclab::testing
