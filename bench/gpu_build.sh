# Sourced by the GPU machine's bench scripts: installs what that machine lacks (abseil
# with gRPC from .device/grpc.tgz, GoogleTest from .device/googletest) and builds lightrl
# with the CUDA backend. Expects ROOT, OUT, B (build dir), PY, note() and elapsed();
# builds the targets in GPU_BUILD_TARGETS. Sets LIGHTRL.
if [ -f "$ROOT/.device/grpc.tgz" ]; then tar -xzf "$ROOT/.device/grpc.tgz" -C / && ldconfig; fi
if ! [ -f /usr/local/lib/cmake/GTest/GTestConfig.cmake ] && ! [ -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ]; then
  cmake -S "$ROOT/.device/googletest" -B /tmp/gtest_build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX=/usr/local > "$OUT/gtest.log" 2>&1 &&
    ninja -C /tmp/gtest_build install >> "$OUT/gtest.log" 2>&1 || { note "googletest build failed"; tail -20 "$OUT/gtest.log"; }
fi
{
  cmake -S "$ROOT" -B "$B" -G Ninja -DLIGHTRL_TORCH_CUDA=ON \
    -DCMAKE_PREFIX_PATH="$($PY -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DLIGHTRL_PYTHON="$PY" &&
  ninja -C "$B" -j16 -k 0 $GPU_BUILD_TARGETS
} > "$OUT/build.log" 2>&1
build_rc=$?
note "build rc=$build_rc after $(elapsed) s"
if [ $build_rc != 0 ]; then grep -E "error|FAILED" "$OUT/build.log" | head -30; fi
LIGHTRL="$B/rl/lightrl"
