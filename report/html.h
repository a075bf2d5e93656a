// A small self-contained HTML page builder for mole's reports (the routing report, the demo's report): sections of
// paragraphs, figures (relative image links, so a report folder can be copied or served as is) and tables. All text
// is plain and escaped; the page has inline CSS and no scripts.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mole {

struct HtmlFigure {
  std::string src;      // relative path of the image
  std::string caption;  // plain text
};

struct HtmlTable {
  explicit HtmlTable(std::string caption = "", std::vector<std::string> header = {})
      : caption(std::move(caption)), header(std::move(header)) {}
  std::string caption;                         // plain text, may be empty
  std::vector<std::string> header;             // column names
  std::vector<std::vector<std::string>> rows;  // cells, plain text; each row as long as the header
};

struct HtmlSection {
  explicit HtmlSection(std::string heading = "", std::string text = "")
      : heading(std::move(heading)), text(std::move(text)) {}
  std::string heading;
  std::string text;  // plain text; a blank line starts a new paragraph
  std::vector<HtmlFigure> figures;
  std::vector<HtmlTable> tables;
};

std::string html_escape(const std::string& text);
// A self-contained page (inline CSS, no scripts): the title, a line under it, then the sections in order.
std::string html_page(const std::string& title, const std::vector<HtmlSection>& sections,
                      const std::string& subtitle = "");
// Writes text to path; throws std::runtime_error naming the file when it cannot.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace mole
