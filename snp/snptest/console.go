package snptest

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Serial console evidence for boot tests: what a guest's console shows when a kernel
// ran, and what the OvmfPkg/AmdSev firmware shows when it refuses a kernel.

// ansiCSI matches the terminal control sequences OVMF writes to the serial console
// (clear screen, cursor moves, "ESC[=3h" mode sets).
var ansiCSI = regexp.MustCompile(`\x1b\[[0-9;=?]*[A-Za-z]`)

// ConsoleText returns a serial console log as plain text: terminal control sequences
// and carriage returns removed.
func ConsoleText(b []byte) string {
	return strings.ReplaceAll(ansiCSI.ReplaceAllString(string(b), ""), "\r", "")
}

// Lines the Debian cloud kernel prints when it runs (console=ttyS0).
const (
	// KernelBannerPrefix starts the kernel's first console line.
	KernelBannerPrefix = "Linux version "
	// KernelCmdlinePrefix is followed by the command line the kernel received
	// (arch/x86/kernel/setup.c).
	KernelCmdlinePrefix = "Command line: "
	// EFIStubInitrdLine is printed by the kernel's EFI stub when it took its initrd
	// from the LINUX_EFI_INITRD_MEDIA_GUID device path: with a UKI, systemd-stub's
	// .initrd section (no -initrd given).
	EFIStubInitrdLine = "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path"
)

// AmdSev firmware fallback: without SEV there is no hashes table, so the AmdSev build's
// blob verifier refuses every -kernel (QemuKernelLoaderFsDxe: "VerifyBlob: Verifier
// called but no hashes table discoverd in MEMFD", then "Access Denied", logged only by
// DEBUG builds) and BDS boots the firmware's built-in GRUB instead. A RELEASE build's
// console then shows, with NNNN varying by build (Boot0001 for edk2 2025.02, Boot0002
// for 2022.11 with a UKI):
//
//	BdsDxe: loading BootNNNN "Grub Bootloader" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(B5AE312C-BC8A-43B1-9C62-EBB826DD5D07)
//	BdsDxe: starting BootNNNN "Grub Bootloader" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(B5AE312C-BC8A-43B1-9C62-EBB826DD5D07)
//	Welcome to GRUB!
//	Entering grub config
//	error: can't find command `sevsecret'.
//	error: unknown argument `-s'.
//	Failed to mount root securely, retrying with password prompt
//	Failed to find any grub configuration on the encrypted volume
//
// after which GRUB reboots (QEMU exits with -no-reboot). The last four lines come from
// Debian's GRUB lacking sevsecret and cryptomount -s (AMDSEV-PROVENANCE.txt).
const (
	// AmdSevGRUBBootOption is the end of the BdsDxe lines that start the built-in
	// GRUB (its firmware volume and file GUIDs).
	AmdSevGRUBBootOption = `"Grub Bootloader" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(B5AE312C-BC8A-43B1-9C62-EBB826DD5D07)`
	// AmdSevGRUBWelcome is GRUB's banner.
	AmdSevGRUBWelcome = "Welcome to GRUB!"
	// AmdSevGRUBGaveUp is GRUB's last line before it reboots.
	AmdSevGRUBGaveUp = "Failed to find any grub configuration on the encrypted volume"
)

var amdSevGRUBStart = regexp.MustCompile(`(?m)^BdsDxe: starting Boot[0-9A-F]{4} ` + regexp.QuoteMeta(AmdSevGRUBBootOption) + `$`)

// CheckAmdSevRefusedKernel returns nil when console (ConsoleText output) proves that
// the AmdSev firmware refused the kernel: BDS started the built-in GRUB, GRUB ran, and
// no kernel line appeared. Otherwise it says what is missing or what ran.
func CheckAmdSevRefusedKernel(console string) error {
	var errs []error
	if !amdSevGRUBStart.MatchString(console) {
		errs = append(errs, fmt.Errorf("no %q line starting the built-in GRUB", "BdsDxe: starting BootNNNN "+AmdSevGRUBBootOption))
	}
	if !strings.Contains(console, AmdSevGRUBWelcome) {
		errs = append(errs, fmt.Errorf("no %q", AmdSevGRUBWelcome))
	}
	for _, ran := range []string{KernelBannerPrefix, EFIStubInitrdLine, "EFI stub: "} {
		if strings.Contains(console, ran) {
			errs = append(errs, fmt.Errorf("the kernel ran (%q on the console)", ran))
			break
		}
	}
	return errors.Join(errs...)
}
