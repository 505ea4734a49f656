// MANIFEST: a small line-oriented text file naming every live file of an index, closed by a
// checksum line so a torn or edited manifest is detected.
#include <cinttypes>
#include <cstdio>
#include <sstream>

#include "cliprt/errors.h"
#include "cliprt/hash.h"
#include "cliprt/persist.h"

namespace cliprt {
namespace {
std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}
[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw FormatError("corrupt index manifest '" + path + "': " + what);
}
uint64_t parse_hex(const std::string& s, const std::string& path) {
  if (s.size() != 16) bad(path, "bad checksum field '" + s + "'");
  uint64_t v = 0;
  for (char c : s) {
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) bad(path, "bad checksum field '" + s + "'");
    v = (v << 4) | uint64_t(d);
  }
  return v;
}
bool safe_name(const std::string& s) {
  if (s.empty() || s.size() > 200) return false;
  for (char c : s)
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_')) return false;
  return s[0] != '.';
}
}  // namespace

std::string manifest_to_text(const Manifest& m) {
  std::ostringstream o;
  o << "cliprt-index " << kFormatVersion << "\n";
  o << "generation " << m.generation << "\n";
  o << "dim " << m.dim << "\n";
  o << "metric " << metric_name(m.metric) << "\n";
  o << "storage " << storage_name(m.storage) << "\n";
  o << "keep_originals " << (m.keep_originals ? 1 : 0) << "\n";
  o << "next_id " << m.next_id << "\n";
  o << "segments " << m.segments.size() << "\n";
  for (auto& s : m.segments) {
    o << "segment " << s.file << " " << s.rows << " " << hex(s.hash) << " "
      << (s.del_file.empty() ? "-" : s.del_file) << " " << hex(s.del_hash) << "\n";
  }
  std::string body = o.str();
  return body + "end " + hex(xxh64(body.data(), body.size())) + "\n";
}

Manifest manifest_from_text(const std::string& text, const std::string& path) {
  size_t endpos = text.rfind("end ");
  if (endpos == std::string::npos || (endpos > 0 && text[endpos - 1] != '\n'))
    bad(path, "truncated (no end line)");
  std::string tail = text.substr(endpos + 4);
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.pop_back();
  if (parse_hex(tail, path) != xxh64(text.data(), endpos)) bad(path, "checksum mismatch");
  std::istringstream in(text.substr(0, endpos));
  Manifest m;
  std::string key;
  uint32_t version = 0;
  if (!(in >> key >> version) || key != "cliprt-index") bad(path, "not a cliprt index manifest");
  if (version != kFormatVersion)
    bad(path, "unsupported format version " + std::to_string(version) + " (this build reads " +
                  std::to_string(kFormatVersion) + ")");
  size_t nseg = 0;
  std::string metric, storage;
  int keep = 0;
  if (!(in >> key >> m.generation) || key != "generation") bad(path, "missing generation");
  if (m.generation >= (uint64_t(1) << 62)) bad(path, "generation out of range");
  if (!(in >> key >> m.dim) || key != "dim" || m.dim <= 0 || m.dim > kMaxDim) bad(path, "missing or bad dim");
  if (!(in >> key >> metric) || key != "metric") bad(path, "missing metric");
  if (!(in >> key >> storage) || key != "storage") bad(path, "missing storage");
  if (!(in >> key >> keep) || key != "keep_originals") bad(path, "missing keep_originals");
  if (!(in >> key >> m.next_id) || key != "next_id" || m.next_id < 0) bad(path, "missing or bad next_id");
  if (!(in >> key >> nseg) || key != "segments" || nseg > (1u << 24)) bad(path, "missing segments");
  try {
    m.metric = parse_metric(metric);
    m.storage = parse_storage(storage);
  } catch (const ValueError& e) {
    bad(path, e.what());
  }
  m.keep_originals = keep != 0;
  for (size_t i = 0; i < nseg; ++i) {
    ManifestSegment s;
    std::string h1, h2;
    if (!(in >> key >> s.file >> s.rows >> h1 >> s.del_file >> h2) || key != "segment" ||
        !safe_name(s.file) || s.rows < 0 || uint64_t(s.rows) >= kMaxRows)
      bad(path, "bad segment line " + std::to_string(i));
    s.hash = parse_hex(h1, path);
    s.del_hash = parse_hex(h2, path);
    if (s.del_file == "-") s.del_file.clear();
    else if (!safe_name(s.del_file)) bad(path, "bad deletion file name");
    m.segments.push_back(s);
  }
  return m;
}

}  // namespace cliprt
