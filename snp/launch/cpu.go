package launch

import (
	"fmt"
	"sort"
	"strings"
)

// CPUSig computes the 32-bit CPUID Fn0000_0001_EAX signature from a family, model and
// stepping (AMD CPUID Specification #25481). Families above 0xf use the extended
// family field, as the reference tool does.
func CPUSig(family, model, stepping uint32) uint32 {
	famLow, famHigh := family, uint32(0)
	if family > 0xf {
		famLow = 0xf
		famHigh = (family - 0xf) & 0xff
	}
	return famHigh<<20 | ((model>>4)&0xf)<<16 | famLow<<8 | (model&0xf)<<4 | stepping&0xf
}

// cpuModels maps QEMU x86 CPU model names (builtin_x86_defs) to the signature the
// guest sees. The set is a superset of the reference tool's CPU_SIGS.
var cpuModels = map[string]uint32{}

func init() {
	add := func(sig uint32, names ...string) {
		for _, n := range names {
			cpuModels[n] = sig
		}
	}
	add(CPUSig(23, 1, 2), "EPYC", "EPYC-v1", "EPYC-v2", "EPYC-IBPB", "EPYC-v3", "EPYC-v4", "EPYC-v5")
	add(CPUSig(23, 49, 0), "EPYC-Rome", "EPYC-Rome-v1", "EPYC-Rome-v2", "EPYC-Rome-v3", "EPYC-Rome-v4", "EPYC-Rome-v5")
	add(CPUSig(25, 1, 1), "EPYC-Milan", "EPYC-Milan-v1", "EPYC-Milan-v2", "EPYC-Milan-v3")
	add(CPUSig(25, 17, 0), "EPYC-Genoa", "EPYC-Genoa-v1", "EPYC-Genoa-v2")
	add(CPUSig(26, 0, 0), "EPYC-Turin", "EPYC-Turin-v1")
}

// CPUSignature returns the guest CPUID signature of a QEMU CPU model name such as
// "EPYC-v4" (0x800f12) or "EPYC-Milan" (0xa00f11). Names are matched exactly, as QEMU
// does; an unknown name is an error, never a silent 0.
func CPUSignature(name string) (uint32, error) {
	if sig, ok := cpuModels[name]; ok {
		return sig, nil
	}
	for n := range cpuModels {
		if strings.EqualFold(n, name) {
			return 0, fmt.Errorf("unknown vCPU type %q (did you mean %q?)", name, n)
		}
	}
	return 0, fmt.Errorf("unknown vCPU type %q (known: %s)", name, strings.Join(CPUTypes(), ", "))
}

// CPUTypes lists the known vCPU model names, sorted.
func CPUTypes() []string {
	out := make([]string, 0, len(cpuModels))
	for n := range cpuModels {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
