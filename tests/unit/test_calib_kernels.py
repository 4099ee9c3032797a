"""Which int8 instruction set an INT8 score names, from real ``/proc/cpuinfo`` lines."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest

from calib.gate import GATE_KERNELS
from calib.kernels import int8_isa, runtime_record
from calib.quantize import RECIPES

# The development VM's first "flags" line (AMD EPYC, AVX2 only): ORT's AVX2 u8s8 kernels.
EPYC_AVX2 = (
    "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 "
    "clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc "
    "rep_good nopl xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 "
    "fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c "
    "rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw "
    "topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms "
    "invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero "
    "xsaveerptr wbnoinvd arat umip pku ospke vaes vpclmulqdq rdpid fsrm"
)
# The lent GPU machine's Intel Xeon (16 cores), its whole "flags" line.
XEON_AMX = (
    "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat "
    "pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc "
    "rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 "
    "fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave "
    "avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch cpuid_fault ssbd ibrs ibpb "
    "stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid "
    "avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni "
    "avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd "
    "arat avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni "
    "avx512_bitalg avx512_vpopcntdq rdpid bus_lock_detect cldemote movdiri movdir64b "
    "fsrm md_clear serialize tsxldtrk ibt amx_bf16 avx512_fp16 amx_tile amx_int8 "
    "flush_l1d arch_capabilities"
)
# An ARMv8.2 core with the dot product extension (aarch64 Linux names them "Features").
ARM_DOTPROD = (
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp"
)


@pytest.mark.parametrize(
    ("cpuinfo", "isa"),
    [
        (EPYC_AVX2, "avx2"),
        (XEON_AMX, "amx_int8"),
        # Without AMX, the same Xeon runs MLAS's AVX512-VNNI kernels.
        (
            XEON_AMX.replace(" amx_int8", "").replace(" amx_tile", "").replace(" amx_bf16", ""),
            "avx512_vnni",
        ),
        (ARM_DOTPROD, "asimddp"),
        ("processor\t: 0\nmodel name\t: some cpu\n", "none"),
    ],
)
def test_int8_isa_names_the_most_capable_kernels(cpuinfo: str, isa: str) -> None:
    assert int8_isa(f"processor\t: 0\nvendor_id\t: x\n{cpuinfo}\n") == isa


def test_runtime_record_of_a_file(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{XEON_AMX}\n\nprocessor\t: 1\n{XEON_AMX}\n")
    record = runtime_record(cpuinfo)
    assert record.cpu_int8_isa == "amx_int8"
    assert record.onnxruntime == onnxruntime.__version__
    assert runtime_record(tmp_path / "missing").cpu_int8_isa == "unknown"


def test_every_recipe_has_the_kernels_its_gate_judges() -> None:
    assert set(GATE_KERNELS) == set(RECIPES)
