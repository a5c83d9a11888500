#include "common/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status.h"

namespace lightrl {
namespace {

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8},  {DType::kF32, "F32", 4},  {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8},  {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},  {DType::kI8, "I8", 1},    {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

}  // namespace

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const auto& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype \"", name, "\""));
}

const char* DTypeName(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return errno == ENOENT ? absl::NotFoundError(absl::StrCat(path, ": no such file"))
                           : absl::InternalError(absl::StrCat(path, ": cannot open: ",
                                                              std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": cannot stat"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::DataLossError(
        absl::StrCat(path, ": ", size, " bytes is too short for a safetensors file (truncated?)"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return absl::InternalError(absl::StrCat(path, ": mmap failed"));
  file->map_ = map;
  file->map_size_ = size;
  const uint8_t* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian on every platform we build for
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len,
                                            " exceeds the file size ", size,
                                            " (truncated or not a safetensors file)"));
  }
  auto header = Json::Parse(absl::string_view(reinterpret_cast<const char*>(base + 8), header_len));
  if (!header.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": bad header: ", header.status().message()));
  }
  if (!header->is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": header is not a JSON object"));
  }
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header->as_object()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return absl::DataLossError(absl::StrCat(path, ": __metadata__ must be an object"));
      }
      for (const auto& [k, v] : entry.as_object()) {
        file->metadata_[k] = v.is_string() ? v.as_string() : v.Dump();
      }
      continue;
    }
    auto bad = [&](absl::string_view what) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", name, "': ", what));
    };
    if (!entry.is_object()) return bad("entry is not an object");
    const Json* dtype = entry.find("dtype");
    const Json* shape = entry.find("shape");
    const Json* offsets = entry.find("data_offsets");
    if (!dtype || !dtype->is_string()) return bad("missing string field 'dtype'");
    if (!shape || !shape->is_array()) return bad("missing array field 'shape'");
    if (!offsets || !offsets->is_array() || offsets->size() != 2) {
      return bad("missing field 'data_offsets' [begin, end]");
    }
    TensorInfo info;
    info.name = name;
    auto dt = ParseDType(dtype->as_string());
    if (!dt.ok()) return bad(dt.status().message());
    info.dtype = *dt;
    for (const Json& d : shape->as_array()) {
      if (!d.is_int() || d.as_int() < 0) return bad(absl::StrCat("bad dimension ", d.Dump()));
      info.shape.push_back(d.as_int());
    }
    const Json& b = offsets->as_array()[0];
    const Json& e = offsets->as_array()[1];
    if (!b.is_int() || !e.is_int() || b.as_int() < 0 || e.as_int() < b.as_int()) {
      return bad(absl::StrCat("bad data_offsets ", offsets->Dump()));
    }
    const uint64_t begin = static_cast<uint64_t>(b.as_int());
    const uint64_t end = static_cast<uint64_t>(e.as_int());
    info.nbytes = static_cast<size_t>(end - begin);
    const uint64_t expect = static_cast<uint64_t>(info.numel()) * DTypeSize(info.dtype);
    if (expect != info.nbytes) {
      return bad(absl::StrCat("shape ", ShapeString(info.shape), " of ", dtype->as_string(),
                              " needs ", expect, " bytes but data_offsets span ", info.nbytes));
    }
    if (end > data_size) {
      return bad(absl::StrCat("data [", begin, ", ", end, ") extends past the end of the data (",
                              data_size, " bytes): file truncated?"));
    }
    info.data = data + begin;
    ranges.emplace_back(begin, end);
    file->index_[name] = file->tensors_.size();
    file->tensors_.push_back(std::move(info));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return absl::DataLossError(absl::StrCat(path, ": tensor data ranges overlap at byte ",
                                              ranges[i].first));
    }
  }
  return file;
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

std::string BuildHeader(const std::vector<TensorData>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  Json header = Json::MakeObject();
  if (!metadata.empty()) {
    Json meta = Json::MakeObject();
    for (const auto& [k, v] : metadata) meta.set(k, Json(v));
    header.set("__metadata__", std::move(meta));
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    Json entry = Json::MakeObject();
    entry.set("dtype", Json(DTypeName(t.dtype)));
    Json shape = Json::MakeArray();
    for (int64_t d : t.shape) shape.push_back(Json(d));
    entry.set("shape", std::move(shape));
    Json offs = Json::MakeArray();
    offs.push_back(Json(static_cast<int64_t>(offset)));
    offs.push_back(Json(static_cast<int64_t>(offset + t.nbytes)));
    entry.set("data_offsets", std::move(offs));
    header.set(t.name, std::move(entry));
    offset += t.nbytes;
  }
  std::string text = header.Dump();
  // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
  while ((text.size() + 8) % 8 != 0) text += ' ';
  return text;
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorData>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": duplicate tensor '", t.name, "'"));
    }
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    if (static_cast<size_t>(numel) * DTypeSize(t.dtype) != t.nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", t.name, "' shape ",
                                                     ShapeString(t.shape), " does not match ",
                                                     t.nbytes, " bytes"));
    }
  }
  std::string header = BuildHeader(tensors, metadata);
  ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Open(path));
  uint64_t len = header.size();
  RETURN_IF_ERROR(writer.Write(&len, 8));
  RETURN_IF_ERROR(writer.Write(header.data(), header.size()));
  for (const auto& t : tensors) RETURN_IF_ERROR(writer.Write(t.data, t.nbytes));
  return writer.Commit();
}

absl::StatusOr<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(const std::string& dir) {
  SafetensorsCheckpoint ckpt;
  ckpt.dir_ = dir;
  const std::string index_path = JoinPath(dir, kIndexName);
  const std::string single_path = JoinPath(dir, kSingleName);
  if (FileExists(index_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(index_path));
    auto index = Json::Parse(text);
    if (!index.ok()) {
      return absl::DataLossError(absl::StrCat(index_path, ": ", index.status().message()));
    }
    const Json* map = index->find("weight_map");
    if (!map || !map->is_object()) {
      return absl::DataLossError(absl::StrCat(index_path, ": missing object 'weight_map'"));
    }
    std::map<std::string, size_t> file_ids;
    for (const auto& [name, file] : map->as_object()) {
      if (!file.is_string()) {
        return absl::DataLossError(
            absl::StrCat(index_path, ": weight_map['", name, "'] is not a file name"));
      }
      auto it = file_ids.find(file.as_string());
      if (it == file_ids.end()) {
        ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(JoinPath(dir, file.as_string())));
        it = file_ids.emplace(file.as_string(), ckpt.files_.size()).first;
        ckpt.files_.push_back(std::move(f));
      }
      const TensorInfo* info = ckpt.files_[it->second]->Find(name);
      if (info == nullptr) {
        return absl::DataLossError(absl::StrCat(index_path, ": tensor '", name, "' is listed in ",
                                                file.as_string(), " but that file lacks it"));
      }
      ckpt.by_name_[name] = {it->second, info};
    }
    for (const auto& f : ckpt.files_) {
      for (const auto& t : f->tensors()) {
        auto it = ckpt.by_name_.find(t.name);
        if (it == ckpt.by_name_.end() || it->second.second != &t) {
          return absl::DataLossError(absl::StrCat(f->path(), ": tensor '", t.name,
                                                  "' is not listed for this file in ", kIndexName));
        }
      }
    }
    return ckpt;
  }
  if (!FileExists(single_path)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no ", kSingleName, " or ", kIndexName));
  }
  ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(single_path));
  ckpt.files_.push_back(std::move(f));
  for (const auto& t : ckpt.files_[0]->tensors()) ckpt.by_name_[t.name] = {0, &t};
  return ckpt;
}

const TensorInfo* SafetensorsCheckpoint::Find(absl::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : it->second.second;
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (const auto& [name, _] : by_name_) names.push_back(name);
  return names;
}

std::string SafetensorsCheckpoint::FileOf(absl::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? dir_ : files_[it->second.first]->path();
}

absl::Status WriteSafetensorsCheckpoint(const std::string& dir,
                                        const std::vector<TensorData>& tensors,
                                        size_t max_shard_bytes) {
  RETURN_IF_ERROR(MakeDirs(dir));
  std::vector<std::vector<TensorData>> shards(1);
  size_t current = 0, total = 0;
  for (const auto& t : tensors) {
    if (current > 0 && current + t.nbytes > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(t);
    current += t.nbytes;
    total += t.nbytes;
  }
  const std::string index_path = JoinPath(dir, kIndexName);
  const std::string single_path = JoinPath(dir, kSingleName);
  std::set<std::string> written;
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (shards.size() == 1) {
    RETURN_IF_ERROR(WriteSafetensors(single_path, shards[0], meta));
    written.insert(kSingleName);
  } else {
    Json weight_map = Json::MakeObject();
    for (size_t i = 0; i < shards.size(); ++i) {
      std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
      RETURN_IF_ERROR(WriteSafetensors(JoinPath(dir, name), shards[i], meta));
      written.insert(name);
      for (const auto& t : shards[i]) weight_map.set(t.name, Json(name));
    }
    Json index = Json::MakeObject();
    Json metadata = Json::MakeObject();
    metadata.set("total_size", Json(static_cast<int64_t>(total)));
    index.set("metadata", std::move(metadata));
    index.set("weight_map", std::move(weight_map));
    RETURN_IF_ERROR(WriteFileAtomic(index_path, index.Dump(2) + "\n"));
    written.insert(kIndexName);
  }
  // A stale index or shard from an earlier save would shadow or pollute this one.
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      bool ours = name == kIndexName || name == kSingleName ||
                  (name.rfind("model-", 0) == 0 && name.size() > 12 &&
                   name.compare(name.size() - 12, 12, ".safetensors") == 0);
      if (ours && !written.count(name)) ::unlink(JoinPath(dir, name).c_str());
    }
    ::closedir(d);
  }
  return absl::OkStatus();
}

}  // namespace lightrl
