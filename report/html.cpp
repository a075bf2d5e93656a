#include "report/html.h"

#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

namespace mole {

std::string html_escape(const std::string& text) {
  static const std::map<char, std::string> kEntities = {
      {'&', "&amp;"}, {'<', "&lt;"}, {'>', "&gt;"}, {'"', "&quot;"}, {'\'', "&#39;"}};
  std::string out;
  for (char c : text) {
    auto it = kEntities.find(c);
    out += it == kEntities.end() ? std::string(1, c) : it->second;
  }
  return out;
}

std::string html_page(const std::string& title, const std::vector<HtmlSection>& sections, const std::string& subtitle) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" << html_escape(title)
    << "</title>\n<style>\n"
       "body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; "
       "max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }\n"
       "h1 { margin-bottom: 0.1em; } .subtitle { color: #666; margin-top: 0; }\n"
       "h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }\n"
       "figure { display: inline-block; vertical-align: top; margin: 0.5em 1em 1em 0; max-width: 100%; }\n"
       "figure img { max-width: 100%; border: 1px solid #eee; }\n"
       "figcaption { font-size: 0.9em; color: #444; max-width: 960px; }\n"
       "table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em 0; }\n"
       "th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }\n"
       "th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }\n"
       "caption { caption-side: top; text-align: left; color: #444; padding-bottom: 0.3em; }\n"
       "</style>\n</head>\n<body>\n<h1>"
    << html_escape(title) << "</h1>\n";
  if (!subtitle.empty()) h << "<p class=\"subtitle\">" << html_escape(subtitle) << "</p>\n";
  for (const auto& s : sections) {
    h << "<section>\n<h2>" << html_escape(s.heading) << "</h2>\n";
    std::string para, line;
    std::istringstream text(s.text + "\n\n");
    while (std::getline(text, line)) {
      if (!line.empty()) { para += (para.empty() ? "" : " ") + line; continue; }
      if (!para.empty()) h << "<p>" << html_escape(para) << "</p>\n";
      para.clear();
    }
    for (const auto& f : s.figures)
      h << "<figure><img src=\"" << html_escape(f.src) << "\" alt=\"" << html_escape(f.caption) << "\"><figcaption>"
        << html_escape(f.caption) << "</figcaption></figure>\n";
    auto row = [&](const char* tag, const std::vector<std::string>& cells) {
      h << "<tr>";
      for (const auto& c : cells) h << "<" << tag << ">" << html_escape(c) << "</" << tag << ">";
      h << "</tr>\n";
    };
    for (const auto& t : s.tables) {
      h << "<table>\n";
      if (!t.caption.empty()) h << "<caption>" << html_escape(t.caption) << "</caption>\n";
      row("th", t.header);
      for (const auto& cells : t.rows) row("td", cells);
      h << "</table>\n";
    }
    h << "</section>\n";
  }
  h << "</body>\n</html>\n";
  return h.str();
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(path + ": cannot open for writing");
  out << text;
  out.close();
  if (!out) throw std::runtime_error(path + ": write failed");
}

}  // namespace mole
