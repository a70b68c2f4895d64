// Jinja's lexer (jinja2/lexer.py) for the default delimiters with trim_blocks and lstrip_blocks,
// as transformers configures it. See lexer.h.
#include "lexer.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "llmtune/util/error.h"
#include "ustring.h"

namespace llmtune::tokenizer::jinja {

void fail(int line, const std::string& what, const std::string& hint) {
  std::string msg = "chat template line " + std::to_string(line) + ": " + what;
  if (!hint.empty()) msg += " (" + hint + ")";
  throw TemplateError(msg);
}

namespace {

int count_newlines(const std::string& s, size_t b, size_t e) {
  int n = 0;
  for (size_t i = b; i < e; ++i) n += s[i] == '\n';
  return n;
}

// Length of the run of (Unicode) whitespace starting at `pos`.
size_t space_run(const std::string& s, size_t pos) {
  size_t i = pos;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (!ustr::is_space(c)) break;
      ++i;
      continue;
    }
    // Multi-byte whitespace (NBSP, U+2000.., U+3000): decode one code point.
    size_t n = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + n > s.size()) break;
    std::u32string cp = ustr::decode(s.substr(i, n));
    if (cp.size() != 1 || !ustr::is_space(cp[0])) break;
    i += n;
  }
  return i - pos;
}

std::string rstrip_space(const std::string& s) { return ustr::strip(s, std::nullopt, false, true); }

bool all_space(const std::string& s, size_t from) { return from < s.size() && space_run(s, from) == s.size() - from; }

// Python's "unicode-escape" decoding of a string literal's body, as Jinja applies it.
std::string unescape(const std::string& body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 >= body.size()) {
      out += c;
      continue;
    }
    char e = body[++i];
    auto hex = [&](int digits) {
      std::string h = body.substr(i + 1, digits);
      if (h.size() != static_cast<size_t>(digits) || h.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
        fail(line, "malformed \\x/\\u escape in string literal", "use \\xNN, \\uNNNN or \\UNNNNNNNN");
      i += digits;
      ustr::append_utf8(out, static_cast<char32_t>(std::stoul(h, nullptr, 16)));
    };
    switch (e) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case '\n': break;  // line continuation
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      case 'N': fail(line, "\\N{...} escapes are not supported in string literals", "write the character itself");
      default:
        if (e >= '0' && e <= '7') {
          int v = e - '0', k = 1;
          while (k < 3 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7') {
            v = v * 8 + (body[++i] - '0');
            ++k;
          }
          ustr::append_utf8(out, static_cast<char32_t>(v));
        } else {
          out += '\\';  // unknown escapes stay as written, like Python
          out += e;
        }
    }
  }
  return out;
}

const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(",
                            ")",  "{",  "}",  ">",  "<",  "=",  ".", ":", "|", ",", ";"};

class Lexer {
 public:
  explicit Lexer(std::string src) : s_(std::move(src)) {}

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < s_.size()) {
      size_t tag = find_tag(pos_);
      if (tag == std::string::npos) {
        emit_text(s_.substr(pos_));
        pos_ = s_.size();
        break;
      }
      std::string text = s_.substr(pos_, tag - pos_);
      char kind = s_[tag + 1];
      char ctrl = tag + 2 < s_.size() && (s_[tag + 2] == '-' || s_[tag + 2] == '+') ? s_[tag + 2] : 0;
      int text_line = line_;
      if (ctrl == '-') {
        text = rstrip_space(text);
      } else if (ctrl != '+' && kind != '{') {
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting) && all_space(text, l_pos)) text = text.substr(0, l_pos);
      }
      if (!text.empty()) out_.push_back({Tok::Text, text, text_line});
      line_ += count_newlines(s_, pos_, tag);
      pos_ = tag + 2 + (ctrl ? 1 : 0);
      if (kind == '#') {
        line_starting = comment();
      } else {
        line_starting = tag_body(kind == '%');
      }
    }
    out_.push_back({Tok::Eof, "", line_});
    return std::move(out_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = s_.find('{', from); i != std::string::npos; i = s_.find('{', i + 1)) {
      if (i + 1 < s_.size() && (s_[i + 1] == '{' || s_[i + 1] == '%' || s_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  void emit_text(const std::string& t) {
    if (!t.empty()) out_.push_back({Tok::Text, t, line_});
    line_ += count_newlines(t, 0, t.size());
  }

  // Consumes the end of a tag at pos_: `-X}` plus following whitespace, `+X}`, or `X}` plus one
  // newline (trim_blocks) for blocks and comments. Returns whether the match ended in '\n'.
  bool consume_end(const std::string& end, bool trims) {
    size_t start = pos_;
    if (s_[pos_] == '-') {
      pos_ += 1 + end.size();
      pos_ += space_run(s_, pos_);
    } else if (s_[pos_] == '+') {
      pos_ += 1 + end.size();
    } else {
      pos_ += end.size();
      if (trims && pos_ < s_.size() && s_[pos_] == '\n') ++pos_;
    }
    line_ += count_newlines(s_, start, pos_);
    return pos_ > start && s_[pos_ - 1] == '\n';
  }

  bool at_end(const std::string& end) const {
    if (s_.compare(pos_, end.size(), end) == 0) return true;
    return (s_[pos_] == '-' || s_[pos_] == '+') && s_.compare(pos_ + 1, end.size(), end) == 0 &&
           !(s_[pos_] == '+' && end == "}}");
  }

  bool comment() {
    int start_line = line_;
    size_t e = s_.find("#}", pos_);
    if (e == std::string::npos) fail(start_line, "missing end of comment tag '#}'", "close the comment");
    size_t body_end = e;
    if (e > pos_ && (s_[e - 1] == '-' || s_[e - 1] == '+')) body_end = e - 1;
    line_ += count_newlines(s_, pos_, body_end);
    pos_ = body_end;
    return consume_end("#}", true);
  }

  bool tag_body(bool block) {
    const std::string end = block ? "%}" : "}}";
    int open_line = line_;
    out_.push_back({block ? Tok::BlockBegin : Tok::VarBegin, "", line_});
    std::vector<char> balance;
    while (true) {
      if (pos_ >= s_.size())
        fail(open_line, block ? "unexpected end of template inside '{%'" : "unexpected end of template inside '{{'",
             block ? "close the tag with '%}'" : "close the tag with '}}'");
      if (balance.empty() && at_end(end)) {
        out_.push_back({block ? Tok::BlockEnd : Tok::VarEnd, "", line_});
        return consume_end(end, block);
      }
      char c = s_[pos_];
      if (size_t ws = space_run(s_, pos_)) {
        line_ += count_newlines(s_, pos_, pos_ + ws);
        pos_ += ws;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        number();
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t b = pos_;
        while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_')) ++pos_;
        out_.push_back({Tok::Name, s_.substr(b, pos_ - b), line_});
      } else if (c == '\'' || c == '"') {
        string_literal(c);
      } else {
        op(balance);
      }
    }
  }

  void number() {
    size_t b = pos_;
    auto digits = [&] {
      while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) ||
                                  (s_[pos_] == '_' && pos_ + 1 < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_ + 1])))))
        ++pos_;
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < s_.size() && s_[pos_] == '.' && std::isdigit(static_cast<unsigned char>(s_[pos_ + 1]))) {
      ++pos_;
      digits();
      is_float = true;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      size_t save = pos_++;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
        digits();
        is_float = true;
      } else {
        pos_ = save;
      }
    }
    std::string spelled;
    for (size_t i = b; i < pos_; ++i)
      if (s_[i] != '_') spelled += s_[i];
    Token t{is_float ? Tok::Float : Tok::Int, spelled, line_};
    if (is_float) {
      t.float_value = std::strtod(spelled.c_str(), nullptr);
    } else {
      errno = 0;
      t.int_value = std::strtoll(spelled.c_str(), nullptr, 10);
      if (errno == ERANGE) fail(line_, "integer literal " + spelled + " does not fit in 64 bits", "use a smaller number");
    }
    out_.push_back(t);
  }

  void string_literal(char quote) {
    size_t b = ++pos_;
    int start_line = line_;
    while (pos_ < s_.size() && s_[pos_] != quote) pos_ += s_[pos_] == '\\' ? 2 : 1;
    if (pos_ >= s_.size()) fail(start_line, "unterminated string literal", std::string("close it with ") + quote);
    std::string body = s_.substr(b, pos_ - b);
    ++pos_;
    line_ += count_newlines(body, 0, body.size());
    out_.push_back({Tok::String, unescape(body, start_line), start_line});
  }

  void op(std::vector<char>& balance) {
    for (const char* o : kOps) {
      size_t n = std::strlen(o);
      if (s_.compare(pos_, n, o) != 0) continue;
      char c = o[0];
      if (n == 1 && (c == '(' || c == '[' || c == '{')) balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
      if (n == 1 && (c == ')' || c == ']' || c == '}')) {
        if (balance.empty() || balance.back() != c)
          fail(line_, std::string("unexpected '") + c + "'", "brackets and braces must balance");
        balance.pop_back();
      }
      out_.push_back({Tok::Op, o, line_});
      pos_ += n;
      return;
    }
    fail(line_, std::string("unexpected character '") + s_[pos_] + "'", "not part of the Jinja expression syntax");
  }

  std::string s_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> out_;
};

// Jinja splits on \r\n, \r and \n, joins with \n and drops one trailing newline.
std::string normalize_newlines(const std::string& src) {
  std::string out;
  out.reserve(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] == '\r') {
      out += '\n';
      if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
    } else {
      out += src[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

std::vector<Token> lex(const std::string& source) { return Lexer(normalize_newlines(source)).run(); }

}  // namespace llmtune::tokenizer::jinja
