package launch_test

import (
	"encoding/hex"
	"fmt"
	"os"

	"github.com/snpd/snpd/snp/launch"
)

// The launch digest of Debian trixie's OVMF.fd for one EPYC-v4 vCPU under QEMU, as
// `sev-snp-measure --mode snp --vcpus 1 --vcpu-type EPYC-v4 --ovmf OVMF.fd` prints it.
func ExampleMeasure() {
	f, err := os.Open("../testdata/firmware/ovmf-trixie-2025.02.fd")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fmt.Println(err)
		return
	}
	sig, err := launch.CPUSignature("EPYC-v4")
	if err != nil {
		fmt.Println(err)
		return
	}
	m, err := launch.Measure(launch.MeasureInput{
		Mode:          launch.ModeSNP,
		Firmware:      f,
		FirmwareSize:  st.Size(),
		VCPUs:         1,
		VCPUSig:       sig,
		VMM:           launch.VMMQEMU,
		GuestFeatures: 0x1,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(hex.EncodeToString(m.Digest))
	fmt.Println(hex.EncodeToString(m.FirmwareSHA256))
	// Output:
	// 6eef547a9fcf5720c5c04883fe85788d29de46b55a51e554467029b554a3352e66d2f3c71b84cea937d19a1a6c41596f
	// 14954040cc754ade0c625ac3470ea46d4c14318b5b1396de4ef77090203d76db
}
