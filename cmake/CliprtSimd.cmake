# SIMD variants live in their own translation units, each compiled with its own ISA flags;
# the dispatcher picks one at run time from CPU features.
function(cliprt_add_simd_variants target)
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    target_sources(${target} PRIVATE csrc/src/cpu/scan_avx2.cpp csrc/src/cpu/scan_avx512.cpp)
    set_source_files_properties(csrc/src/cpu/scan_avx2.cpp PROPERTIES
      COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mpopcnt")
    set_source_files_properties(csrc/src/cpu/scan_avx512.cpp PROPERTIES
      COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mavx512bf16;-mavx512vpopcntdq;-mfma;-mf16c;-mpopcnt")
    target_compile_definitions(${target} PUBLIC CLIPRT_HAVE_X86_VARIANTS=1)
  else()
    target_compile_definitions(${target} PUBLIC CLIPRT_HAVE_X86_VARIANTS=0)
  endif()
endfunction()

function(cliprt_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter -O3)
  endif()
endfunction()
