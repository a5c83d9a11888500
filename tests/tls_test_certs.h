// Certificates for TLS tests, made at run time by the openssl command (run as an
// argument vector, never through a shell) in a fresh temporary folder: a CA with a server
// certificate and a client certificate it signs, and a second, unrelated CA with a client
// certificate of its own. Leaf certificates name 127.0.0.1 and localhost.
#pragma once

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace lightrl {

struct TestCertificates {
  std::string dir;
  std::string ca, server_cert, server_key, client_cert, client_key;
  // Signed by other_ca, which the servers do not trust.
  std::string other_ca, other_client_cert, other_client_key;
};

// Runs `argv` (argv[0] looked up on PATH) and waits; an error names the command and its
// exit status.
inline absl::Status RunCommand(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot run ", argv[0]));
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(absl::StrJoin(argv, " "), ": exit status ", status));
  }
  return absl::OkStatus();
}

inline absl::Status MakeCa(const std::string& dir, const std::string& name) {
  return RunCommand({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                     "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-keyout",
                     dir + "/" + name + ".key", "-out", dir + "/" + name + ".pem", "-subj",
                     "/CN=" + name});
}

// NAME.pem and NAME.key, signed by CA.pem/CA.key, for 127.0.0.1 and localhost.
inline absl::Status MakeLeaf(const std::string& dir, const std::string& ca,
                             const std::string& name) {
  const std::string base = dir + "/" + name;
  if (absl::Status s = RunCommand({"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                                   "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                                   base + ".key", "-out", base + ".csr", "-subj", "/CN=" + name});
      !s.ok()) {
    return s;
  }
  {
    std::ofstream ext(base + ".ext");
    ext << "basicConstraints=CA:FALSE\n"
           "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
           "extendedKeyUsage=serverAuth,clientAuth\n";
  }
  return RunCommand({"openssl", "x509", "-req", "-in", base + ".csr", "-CA",
                     dir + "/" + ca + ".pem", "-CAkey", dir + "/" + ca + ".key",
                     "-CAcreateserial", "-days", "2", "-out", base + ".pem", "-extfile",
                     base + ".ext"});
}

inline absl::StatusOr<TestCertificates> MakeTestCertificates() {
  std::string pattern = absl::StrCat(::testing::TempDir(), "/lightrl_tls_XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) return absl::InternalError("mkdtemp failed");
  TestCertificates c;
  c.dir = pattern;
  for (absl::Status s : {MakeCa(c.dir, "ca"), MakeLeaf(c.dir, "ca", "server"),
                         MakeLeaf(c.dir, "ca", "client"), MakeCa(c.dir, "other_ca"),
                         MakeLeaf(c.dir, "other_ca", "other_client")}) {
    if (!s.ok()) return s;
  }
  c.ca = c.dir + "/ca.pem";
  c.server_cert = c.dir + "/server.pem";
  c.server_key = c.dir + "/server.key";
  c.client_cert = c.dir + "/client.pem";
  c.client_key = c.dir + "/client.key";
  c.other_ca = c.dir + "/other_ca.pem";
  c.other_client_cert = c.dir + "/other_client.pem";
  c.other_client_key = c.dir + "/other_client.key";
  return c;
}

}  // namespace lightrl
