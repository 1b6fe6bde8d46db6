package launch

// cpuid executes the CPUID instruction (probe_amd64.s). golang.org/x/sys/cpu keeps its
// CPUID reader internal and exposes no AMD memory-encryption leaf, hence this 10-line
// assembly function.
func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)

// hostSEVBits reads CPUID 0x8000001F (AMD APM vol. 3, "Encrypted Memory Capabilities"):
// EAX bit 1 SEV, bit 4 SEV-SNP; EBX[5:0] the C-bit position, EBX[11:6] the physical
// address bits lost to encryption. ok is false when the CPU does not report SEV.
func hostSEVBits() (cbitpos, reducedPhysBits uint32, snp, ok bool) {
	maxExt, _, _, _ := cpuid(0x80000000, 0)
	if maxExt < 0x8000001F {
		return 0, 0, false, false
	}
	eax, ebx, _, _ := cpuid(0x8000001F, 0)
	if eax&(1<<1) == 0 {
		return 0, 0, false, false
	}
	return ebx & 0x3f, (ebx >> 6) & 0x3f, eax&(1<<4) != 0, true
}

// hostCPUID1EAX reads CPUID(1).EAX, the processor's family, model and stepping (AMD APM
// vol. 3, CPUID Fn0000_0001_EAX), from which snp.ProductLineFromCPUID names the chip's
// SEV-SNP product line.
func hostCPUID1EAX() uint32 {
	eax, _, _, _ := cpuid(1, 0)
	return eax
}
