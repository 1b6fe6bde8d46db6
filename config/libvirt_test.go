package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/snpd/snpd/snp/snptest"
)

const libvirtSNPDomain = "testdata/libvirt/launch-security-sev-snp.xml"

// replaceOnce replaces old (which must occur exactly once) with new.
func replaceOnce(t testing.TB, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("%q occurs %d times in the domain, want once", old, n)
	}
	return strings.Replace(s, old, new, 1)
}

// conformingSNPDomain derives from libvirt's SEV-SNP test domain one that the example
// policy accepts: firmware loaded as a ROM (-bios), an allowed CPU model, no USB.
func conformingSNPDomain(t testing.TB) string {
	s := string(snptest.ReadShared(t, libvirtSNPDomain))
	s = replaceOnce(t, s, "<loader stateless='yes'/>", "<loader type='rom'>/usr/share/ovmf/OVMF.amdsev.fd</loader>")
	s = replaceOnce(t, s, "<model fallback='forbid'>qemu64</model>", "<model fallback='forbid'>EPYC-Milan</model>")
	s = replaceOnce(t, s, "<controller type='usb' index='0' model='qemu-xhci'>", "<controller type='usb' index='0' model='none'>")
	return s
}

func TestFromLibvirtXMLMapsSNPDomain(t *testing.T) {
	vm, err := FromLibvirtXML(snptest.ReadShared(t, libvirtSNPDomain))
	if err != nil {
		t.Fatal(err)
	}
	lv := vm.Libvirt
	if vm.Name != "QEMUGuest1" || vm.VCPUs != 1 || vm.CPUModel != "qemu64" || vm.MemoryMiB != 214 ||
		vm.Firmware != "" || vm.Kernel != "" || vm.Console != "none" {
		t.Fatalf("VM: %+v", vm)
	}
	s := vm.SNP
	if s.Policy != 0x30000 || !s.AuthorKeyEnabled || !s.VCEKDisabled || s.CBitPos != 47 || s.ReducedPhysBits != 1 ||
		!strings.HasPrefix(s.IDBlock, "bGlidmlydGxp") || len(s.IDAuth) != 5464 ||
		s.HostData != "bGlidmlydGxpYnZpcnRsaWJ2aXJ0bGlidmlydGxpYnY=" || s.GuestVisibleWorkarounds != "bGlidmlydGxpYnZpcnRsaQ==" {
		t.Fatalf("SNP: %+v", s)
	}
	if lv.LaunchSecurity != "sev-snp" || lv.KernelHashes || lv.LoaderType != "" || lv.FirmwareAutoselect != "efi" ||
		lv.Emulator != "/usr/bin/qemu-system-x86_64" || lv.Machine != "pc-q35-8.2" || lv.DomainType != "kvm" || lv.QEMUCommandline {
		t.Fatalf("libvirt source: %+v", lv)
	}
	if want := []Device{{Class: "disk", Backend: "raw"}, {Class: "usb", Backend: "qemu-xhci"}}; !reflect.DeepEqual(vm.Devices(), want) {
		t.Fatalf("devices %+v, want %+v", vm.Devices(), want)
	}
	if vm.Disks[0].Path != "/dev/HostVG/QEMUGuest1" {
		t.Fatalf("disk %+v", vm.Disks[0])
	}
}

// TestLibvirtVariantsAgainstExamplePolicy checks libvirt's SEV-SNP test domain and
// variants of it against config/examples/policy.toml: each gives exactly its violations.
func TestLibvirtVariantsAgainstExamplePolicy(t *testing.T) {
	p := examplePolicy(t)
	base := string(snptest.ReadShared(t, libvirtSNPDomain))
	ok := conformingSNPDomain(t)
	amdsev := bookwormOVMF(true) // facts of an allowlisted firmware with a kernel-hashes section
	plainFW := bookwormOVMF(false)
	unknownFW := bookwormOVMF(false)
	unknownFW.FirmwareSHA256, unknownFW.FirmwareSHA384 = nil, nil
	none := amdsev
	none.Platform = PlatformNone
	withKernel := replaceOnce(t, ok, "<boot dev='hd'/>", "<kernel>/vmlinuz</kernel><initrd>/initrd</initrd><cmdline>console=ttyS0</cmdline>")
	noLaunchSec := ok[:strings.Index(ok, "<launchSecurity")] + "</domain>\n"

	for _, tc := range []struct {
		name  string
		xml   string
		facts Facts
		want  []string
	}{
		{"libvirt test domain as is", base, unknownFW, []string{
			"firmware.loader=unspecified", "firmware.allowlist=(none given)", "vcpu.models=qemu64", "devices.classes=usb"}},
		{"conforming", ok, amdsev, []string{}},
		{"debug bit set", replaceOnce(t, ok, "<policy>0x00030000</policy>", "<policy>0x000b0000</policy>"), amdsev,
			[]string{"snp.forbid_debug=0xb0000"}},
		{"policy without SMT", replaceOnce(t, ok, "<policy>0x00030000</policy>", "<policy>0x00020000</policy>"), amdsev,
			[]string{"snp.require_smt=0x20000"}},
		{"kernel without kernelHashes", withKernel, amdsev,
			[]string{"firmware.allow_unmeasured_kernel=kernelHashes=no"}},
		{"kernel with kernelHashes", replaceOnce(t, withKernel, "<launchSecurity type='sev-snp'", "<launchSecurity type='sev-snp' kernelHashes='yes'"), amdsev,
			[]string{}},
		{"kernel, firmware without kernel hashes", replaceOnce(t, withKernel, "<launchSecurity type='sev-snp'", "<launchSecurity type='sev-snp' kernelHashes='yes'"), plainFW,
			[]string{"firmware.allow_unmeasured_kernel=/usr/share/ovmf/OVMF.amdsev.fd"}},
		{"pflash loader", replaceOnce(t, ok, "<loader type='rom'>", "<loader readonly='yes' type='pflash'>"), amdsev,
			[]string{"firmware.loader=pflash"}},
		{"pflash loader with a UEFI variable store", replaceOnce(t, ok, "<loader type='rom'>/usr/share/ovmf/OVMF.amdsev.fd</loader>",
			"<loader readonly='yes' type='pflash'>/usr/share/ovmf/OVMF.amdsev.fd</loader><nvram>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram>"), amdsev,
			[]string{"firmware.loader=pflash", "devices.classes=nvram"}},
		{"no launchSecurity on a sev-snp host", noLaunchSec, amdsev, []string{"libvirt.launch_security=none"}},
		{"no launchSecurity on platform none", noLaunchSec, none, []string{}},
		{"sev launchSecurity", strings.Replace(ok, "type='sev-snp'", "type='sev'", 1), none,
			[]string{"libvirt.launch_security=sev"}},
		{"extra devices", replaceOnce(t, ok, "<memballoon model='none'/>",
			"<memballoon model='virtio'/><hostdev mode='subsystem' type='pci'/><interface type='direct'><source dev='eth0' mode='bridge'/></interface>"+
				"<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel><vsock model='virtio'><cid auto='no' address='7'/></vsock>"), amdsev,
			[]string{"devices.network_types=direct", "devices.channel_types=virtio/spicevmc", "devices.classes=memballoon", "devices.classes=hostdev"}},
		{"qemu:commandline", replaceOnce(t, strings.Replace(ok, "<domain type='kvm'>", "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>", 1),
			"</devices>", "</devices><qemu:commandline><qemu:arg value='-s'/></qemu:commandline>"), amdsev,
			[]string{"libvirt.qemu_commandline=qemu:commandline"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := FromLibvirtXML([]byte(tc.xml))
			if err != nil {
				t.Fatal(err)
			}
			// The domain's disk lies in the image directory (TestDiskDirs covers the rule).
			f := tc.facts
			f.ImageDir = "/dev/HostVG"
			for _, d := range vm.Disks {
				f.DiskRealPaths = append(f.DiskRealPaths, d.Path)
			}
			got := rules(p.Check(vm, f))
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("violations\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestFromLibvirtXMLErrors(t *testing.T) {
	ok := conformingSNPDomain(t)
	for _, tc := range []struct{ name, xml, want string }{
		{"not xml", "<domain", "parsing domain XML"},
		{"short id block", strings.Replace(ok, "<idBlock>bGlidmlydGxp", "<idBlock>", 1), "idBlock"},
		{"bad host data", strings.Replace(ok, "<hostData>bGli", "<hostData>!!!!", 1), "hostData: decoding base64"},
		{"id block alone", ok[:strings.Index(ok, "<idAuth>")] + ok[strings.Index(ok, "</idAuth>")+len("</idAuth>"):], "idBlock and idAuth must be given together"},
		{"memory unit", strings.Replace(ok, "<memory unit='KiB'>", "<memory unit='furlong'>", 1), `memory: unknown unit "furlong"`},
		{"huge memory", strings.Replace(ok, "<memory unit='KiB'>219100", "<memory unit='TiB'>5000", 1), "memory: 5000 TiB is more than"},
		// libvirtxml cannot skip a launchSecurity of a type it does not know: refused.
		{"unknown launchSecurity", strings.Replace(ok, "type='sev-snp'", "type='cca'", 1), "did not consume entire <launchSecurity>"},
		{"too big", "<domain>" + strings.Repeat(" ", MaxLibvirtXMLSize) + "</domain>", "more than the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := FromLibvirtXML([]byte(tc.xml))
			if err == nil || vm != nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n\n") {
				t.Fatalf("got %v, %v; want an error containing %q", vm, err, tc.want)
			}
		})
	}
}

func TestFromLibvirtXMLAllSharedDomains(t *testing.T) {
	dir := filepath.Join(snptest.SharedDir(t, "testdata/libvirt"), "testdata", "libvirt")
	files, _ := filepath.Glob(filepath.Join(dir, "*.xml"))
	if len(files) == 0 {
		t.Fatalf("no libvirt domains in %s", dir)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		vm, err := FromLibvirtXML(data)
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		if vm.Libvirt.LaunchSecurity == "" || vm.Name != "QEMUGuest1" {
			t.Errorf("%s: launch security %q, name %q", filepath.Base(f), vm.Libvirt.LaunchSecurity, vm.Name)
		}
	}
}

func FuzzFromLibvirtXML(f *testing.F) {
	for _, rel := range []string{"launch-security-sev-snp.xml", "launch-security-sev-direct.xml"} {
		if data, err := os.ReadFile(filepath.Join(snptest.RepoRoot(f), "..", "shared", "testdata", "libvirt", rel)); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(`<domain type='kvm'><name>a</name><memory unit='MiB'>256</memory><vcpu current='1'>2</vcpu>` +
		`<os><type>hvm</type><loader type='rom'>/fw</loader><kernel>/k</kernel></os><cpu mode='host-passthrough'/>` +
		`<devices><disk type='network' device='disk'><source protocol='nbd'/></disk><interface type='user'/>` +
		`<serial type='pty'/><channel type='unix'><target type='virtio' name='org.snpd.agent.0'/></channel>` +
		`<vsock><cid auto='yes'/></vsock><input type='tablet' bus='usb'/><video><model type='vga'/></video></devices>` +
		`<launchSecurity type='sev-snp' kernelHashes='yes'><policy>0x30000</policy><cbitpos>99</cbitpos></launchSecurity></domain>`))
	p, err := LoadPolicy(filepath.Join(snptest.RepoRoot(f), "config", "examples", "policy.toml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		vm, err := FromLibvirtXML(data)
		if err != nil {
			if vm != nil {
				t.Fatal("error with a VM")
			}
			return
		}
		if vm.Libvirt == nil {
			t.Fatal("mapped VM without its libvirt source")
		}
		a := p.Check(vm, Facts{})
		if !reflect.DeepEqual(a, p.Check(vm, Facts{})) {
			t.Fatal("Check is not deterministic")
		}
		for _, v := range a {
			if v.Rule == "" || v.Message == "" || strings.Contains(v.Message, "\n") {
				t.Fatalf("bad violation %+v", v)
			}
		}
		if _, err := vm.Canonical(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestFromLibvirtXMLMapsDevicesAndModes(t *testing.T) {
	vm, err := FromLibvirtXML([]byte(`<domain type='kvm'><name>d</name><memory unit='GiB'>2</memory>
<vcpu placement='static' current='2'>8</vcpu><cpu mode='host-passthrough'/>
<os><type arch='x86_64' machine='q35'>hvm</type><loader type='rom'>/fw.fd</loader>
<kernel>/k</kernel><initrd>/i</initrd><cmdline>console=ttyS0</cmdline></os>
<devices>
 <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/a.qcow2'/><readonly/></disk>
 <disk type='file' device='cdrom'><source file='/cd.iso'/></disk>
 <interface type='user'><mac address='52:54:00:00:00:01'/></interface>
 <interface type='bridge'><source bridge='br0'/><target dev='vnet7'/></interface>
 <serial type='pty'/>
 <channel type='unix'><target type='virtio' name='org.snpd.agent.0'/></channel>
 <vsock model='virtio'><cid auto='no' address='42'/></vsock>
 <controller type='virtio-serial'/><controller type='usb' model='none'/>
 <input type='tablet' bus='usb'/><watchdog model='i6300esb'/><tpm model='tpm-crb'/>
</devices></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	if vm.MemoryMiB != 2048 || vm.VCPUs != 2 || vm.CPUModel != "host-passthrough" || vm.Kernel != "/k" ||
		vm.Initrd != "/i" || vm.Cmdline != "console=ttyS0" || vm.Firmware != "/fw.fd" || vm.Libvirt.LoaderType != "rom" ||
		vm.Libvirt.LaunchSecurity != "" || vm.Console != "serial" {
		t.Fatalf("VM %+v", vm)
	}
	if !reflect.DeepEqual(vm.Disks, []Disk{{Path: "/a.qcow2", Format: "qcow2", ReadOnly: true}}) ||
		!reflect.DeepEqual(vm.Networks, []Network{{Type: "user", MAC: "52:54:00:00:00:01"}, {Type: "tap", Tap: "vnet7"}}) ||
		!reflect.DeepEqual(vm.Channel, &Channel{VsockCID: 42, Serial: true}) {
		t.Fatalf("disks %+v networks %+v channel %+v", vm.Disks, vm.Networks, vm.Channel)
	}
	want := []Device{{"cdrom", "/cd.iso"}, {"input", "tablet/usb"}, {"watchdog", "i6300esb"}, {"tpm", "tpm-crb"}}
	if !reflect.DeepEqual(vm.Libvirt.OtherDevices, want) {
		t.Fatalf("other devices %+v, want %+v", vm.Libvirt.OtherDevices, want)
	}
	// 1000 of each unit, rounded up to whole MiB as libvirt does.
	for unit, mib := range map[string]uint64{"b": 1, "KB": 1, "k": 1, "MB": 954, "M": 1000, "G": 1000 << 10, "GB": 953675} {
		got, err := memoryMiB(1000, unit)
		if err != nil || got != mib {
			t.Errorf("1000 %s = %d MiB (%v), want %d", unit, got, err, mib)
		}
	}
}
