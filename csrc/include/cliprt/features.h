// Build features. CMakeLists.txt defines each as 0 or 1 (never leaves one undefined), and the
// code tests them with #if, so a build that forgot one fails here instead of silently
// compiling the feature out.
//   CLIPRT_WITH_CUDA           the CUDA kernels and the device index are compiled in
//   CLIPRT_HAVE_X86_VARIANTS   the AVX2 / AVX-512 scan variants are compiled in
#pragma once
#if !defined(CLIPRT_WITH_CUDA) || !defined(CLIPRT_HAVE_X86_VARIANTS)
#error "CLIPRT_WITH_CUDA and CLIPRT_HAVE_X86_VARIANTS must be defined as 0 or 1 by the build (CMakeLists.txt)"
#endif
