package snptest

import (
	"strings"
	"testing"
)

func TestCheckAmdSevRefusedKernel(t *testing.T) {
	raw := "\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: loading Boot0001 " + AmdSevGRUBBootOption + "\r\n" +
		"BdsDxe: starting Boot0001 " + AmdSevGRUBBootOption + "\r\nWelcome to GRUB!\r\n\r\n" + AmdSevGRUBGaveUp + "\r\n"
	c := ConsoleText([]byte(raw))
	if strings.ContainsAny(c, "\x1b\r") {
		t.Fatalf("control characters left: %q", c)
	}
	if err := CheckAmdSevRefusedKernel(c); err != nil {
		t.Fatal(err)
	}
	if err := CheckAmdSevRefusedKernel(c + "[    0.000000] Linux version 6.1.0\n"); err == nil || !strings.Contains(err.Error(), "the kernel ran") {
		t.Fatalf("kernel banner: %v", err)
	}
	if err := CheckAmdSevRefusedKernel("EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path\n"); err == nil ||
		!strings.Contains(err.Error(), "BdsDxe: starting BootNNNN") || !strings.Contains(err.Error(), "Welcome") {
		t.Fatalf("a booted console: %v", err)
	}
}
