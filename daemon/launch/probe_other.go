//go:build !amd64

package launch

// hostSEVBits reports no SEV on architectures other than amd64.
func hostSEVBits() (cbitpos, reducedPhysBits uint32, snp, ok bool) { return 0, 0, false, false }

// hostCPUID1EAX reports no CPU signature on architectures other than amd64.
func hostCPUID1EAX() uint32 { return 0 }
