// csrc/grl_math.h as device code: with __CUDA_ARCH__ set while it is read, its
// branches pick what a GPU runs (::expf, ::log1pf, the rolled loops), not the CPU's
// vectorisable forms. Force-included after cuda_emu.h; the .cu's own include of it
// is then a no-op (#pragma once).
#pragma once
#include <c10/macros/Macros.h>
#include <cmath>
#define __CUDA_ARCH__ 900
#include "../../csrc/grl_math.h"
#undef __CUDA_ARCH__
