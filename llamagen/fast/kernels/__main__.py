"""`python -m llamagen.fast.kernels`: build the CPU kernels now (make setup does), not at the first generation."""

from llamagen.fast.kernels import cpu_has_instructions, load

if load():
    print("llamagen CPU kernels: ready")
elif cpu_has_instructions():
    print("llamagen CPU kernels: the build failed (see the warning above); decoding works, only slower")
else:
    print("llamagen CPU kernels: this CPU lacks AVX-512 BF16; torch's own ops will serve")
