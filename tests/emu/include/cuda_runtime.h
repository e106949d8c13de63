// Emulator stand-in: everything lives in cuda_emu.h, force-included by build.py.
#pragma once
