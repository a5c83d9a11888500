# Finds LibTorch and defines lightrl::torch, to be linked PRIVATE only.
#
# Where it comes from, first match wins:
#   1. CMAKE_PREFIX_PATH / Torch_DIR naming a LibTorch (a user's own, or the GPU machine's
#      torch.utils.cmake_prefix_path): used through its TorchConfig.cmake.
#   2. The project's .venv (scripts/setup.sh installs torch there).
# Without LIGHTRL_TORCH_CUDA the CPU libraries (torch_cpu, c10) are imported directly, so
# a CUDA wheel serves as a CPU LibTorch without its CUDA libraries being needed at link.

set(LIGHTRL_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python whose torch package provides LibTorch when no prefix path names one")

set(_torch_root "")
if(NOT Torch_DIR)
  find_path(_torch_config_dir TorchConfig.cmake PATH_SUFFIXES Torch share/cmake/Torch NO_CACHE)
  if(_torch_config_dir)
    get_filename_component(_torch_root "${_torch_config_dir}/../../.." ABSOLUTE)
  elseif(EXISTS "${LIGHTRL_PYTHON}")
    execute_process(
      COMMAND "${LIGHTRL_PYTHON}" -c "import os,torch;print(os.path.dirname(torch.__file__))"
      OUTPUT_VARIABLE _torch_root OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
    if(NOT _rc EQUAL 0)
      set(_torch_root "")
    endif()
  endif()
else()
  get_filename_component(_torch_root "${Torch_DIR}/../../.." ABSOLUTE)
endif()
if(NOT _torch_root OR NOT EXISTS "${_torch_root}/include/torch")
  message(FATAL_ERROR "lightrl: LibTorch not found. Run scripts/setup.sh (installs torch into "
                      ".venv) or pass -DCMAKE_PREFIX_PATH=<libtorch or torch.utils.cmake_prefix_path>.")
endif()
message(STATUS "lightrl: LibTorch at ${_torch_root}")

add_library(lightrl_torch INTERFACE)
add_library(lightrl::torch ALIAS lightrl_torch)

if(LIGHTRL_TORCH_CUDA)
  list(APPEND CMAKE_PREFIX_PATH "${_torch_root}/share/cmake")
  find_package(Torch REQUIRED)
  target_link_libraries(lightrl_torch INTERFACE ${TORCH_LIBRARIES})
  target_compile_options(lightrl_torch INTERFACE ${TORCH_CXX_FLAGS})
  target_compile_definitions(lightrl_torch INTERFACE LIGHTRL_WITH_TORCH_CUDA=1)
else()
  find_library(_torch_cpu torch_cpu PATHS "${_torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
  find_library(_c10 c10 PATHS "${_torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
  target_include_directories(lightrl_torch SYSTEM INTERFACE
      "${_torch_root}/include" "${_torch_root}/include/torch/csrc/api/include")
  target_link_libraries(lightrl_torch INTERFACE "${_torch_cpu}" "${_c10}" Threads::Threads)
  target_link_options(lightrl_torch INTERFACE "-Wl,-rpath,${_torch_root}/lib" "-Wl,--no-as-needed")
  # The wheels are built with the C++11 ABI.
  target_compile_definitions(lightrl_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
endif()
