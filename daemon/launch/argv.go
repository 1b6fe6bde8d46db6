package launch

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Fixed object and device ids used in the argv and by the pre-cont verification.
const (
	// SNPObjectID is the sev-snp-guest object's id ("lsec0", as libvirt names it).
	SNPObjectID = "lsec0"
	// AgentPortName is the virtio-serial port name the guest agent opens.
	AgentPortName = "org.snpd.agent.0"
	// ConsoleLogName, QMPSocketName, AgentSocketName and StderrName are the file names
	// inside a VM's runtime directory.
	ConsoleLogName  = "console.log"
	QMPSocketName   = "qmp.sock"
	AgentSocketName = "agent.sock"
	StderrName      = "qemu.stderr"
	// PIDFileName is the file QEMU writes (and locks) its pid into (-pidfile). The
	// argument also marks every QEMU snpd starts with the VM's runtime directory, which
	// FindQEMUs reads from the command line.
	PIDFileName = "qemu.pid"
)

// SandboxArg is the -sandbox value every launch uses: seccomp on, and obsolete system
// calls, privilege changes, process spawning and resource control denied.
const SandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// snpObject is the sev-snp-guest -object in QEMU's JSON syntax. Field order follows
// libvirt's qemuBuildSEVSNPCommandLine so the same settings give the same JSON line.
// []byte fields are base64-encoded by encoding/json, which is what QEMU expects.
type snpObject struct {
	QOMType                 string `json:"qom-type"`
	ID                      string `json:"id"`
	CBitPos                 uint32 `json:"cbitpos"`
	ReducedPhysBits         uint32 `json:"reduced-phys-bits"`
	Policy                  uint64 `json:"policy"`
	GuestVisibleWorkarounds []byte `json:"guest-visible-workarounds,omitempty"`
	IDBlock                 []byte `json:"id-block,omitempty"`
	IDAuth                  []byte `json:"id-auth,omitempty"`
	HostData                []byte `json:"host-data,omitempty"`
	AuthorKeyEnabled        bool   `json:"author-key-enabled,omitempty"`
	VCEKDisabled            bool   `json:"vcek-disabled,omitempty"`
	KernelHashes            bool   `json:"kernel-hashes,omitempty"`
}

// SNPObject returns the sev-snp-guest object the spec emits (its JSON is the -object value).
func (s *Spec) snpObject() snpObject {
	return snpObject{
		QOMType:                 "sev-snp-guest",
		ID:                      SNPObjectID,
		CBitPos:                 s.SNP.CBitPos,
		ReducedPhysBits:         s.SNP.ReducedPhysBits,
		Policy:                  s.SNP.PolicyBits(),
		GuestVisibleWorkarounds: s.SNP.GuestVisibleWorkarounds,
		IDBlock:                 s.SNP.IDBlock,
		IDAuth:                  s.SNP.IDAuth,
		HostData:                s.SNP.HostData,
		AuthorKeyEnabled:        s.SNP.AuthorKey,
		VCEKDisabled:            s.SNP.VCEKDisabled,
		KernelHashes:            s.SNP.KernelHashes,
	}
}

type blockdevFile struct {
	Driver   string `json:"driver"`
	Filename string `json:"filename"`
	NodeName string `json:"node-name"`
	ReadOnly bool   `json:"read-only"`
}

type blockdevFormat struct {
	NodeName string `json:"node-name"`
	ReadOnly bool   `json:"read-only"`
	Driver   string `json:"driver"`
	File     string `json:"file"`
	// backing true adds "backing": null (qcow2): QEMU must not follow a backing file
	// named inside the image (that would open host files the definition never named).
	backing bool
}

func (b blockdevFormat) MarshalJSON() ([]byte, error) {
	type plain blockdevFormat
	if !b.backing {
		return json.Marshal(plain(b))
	}
	// "backing": null needs an explicit null, which omitempty cannot express.
	return json.Marshal(struct {
		plain
		Backing *struct{} `json:"backing"`
	}{plain: plain(b)})
}

type device map[string]any

// fdPlan numbers the inherited descriptors: ExtraFiles[i] becomes fd 3+i in QEMU.
type fdPlan struct {
	files []*os.File
}

func (p *fdPlan) add(f *os.File) int {
	p.files = append(p.files, f)
	return 2 + len(p.files)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Only plain structs, maps of strings/numbers/bools and byte slices are marshalled.
		panic(fmt.Sprintf("argv: marshalling %T: %v", v, err))
	}
	return string(b)
}

// qemuOptEscape escapes a value for QEMU's "key=value,..." option syntax (a comma is
// written twice). Only used where QEMU has no JSON syntax (-chardev).
func qemuOptEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// BuildArgv turns a spec into QEMU's arguments (without the binary itself) and the files
// QEMU inherits: extraFiles[i] is fd 3+i in QEMU (use as exec.Cmd.ExtraFiles). It is pure:
// it opens nothing and reads only the spec. The order of extraFiles is: QMP listener,
// firmware, kernel, initrd, each disk's descriptors, agent listener (absent ones
// skipped). Entries are nil where the spec's files are nil (tests).
func BuildArgv(s *Spec) (args []string, extraFiles []*os.File) {
	var fds fdPlan
	a := func(v ...string) { args = append(args, v...) }

	qmpFD := fds.add(s.Runtime.QMP)
	fwFD := fds.add(fileOf(s.Firmware))

	a("-name", "guest="+qemuOptEscape(s.Name)+",debug-threads=on")
	a("-S", "-no-user-config", "-nodefaults")
	a("-pidfile", filepath.Join(s.Runtime.Dir, PIDFileName))
	a("-sandbox", SandboxArg)
	a("-display", "none")
	machine := "q35,dump-guest-core=off"
	if s.Platform == PlatformSEVSNP {
		machine += ",confidential-guest-support=" + SNPObjectID
	}
	a("-machine", machine)
	a("-accel", string(s.Accel))
	cpu := qemuOptEscape(s.CPUModel)
	if s.Accel == AccelKVM {
		// enforce: QEMU refuses to start when the host cannot give the guest every CPUID
		// feature of the model, instead of silently starting a different CPU.
		cpu += ",enforce"
	}
	a("-cpu", cpu)
	a("-smp", fmt.Sprintf("%d", s.VCPUs))
	a("-m", fmt.Sprintf("size=%dM", s.MemoryMiB))
	if s.Platform == PlatformSEVSNP {
		a("-object", mustJSON(s.snpObject()))
	}
	a("-bios", procFD(fwFD))
	if s.Kernel != nil {
		a("-kernel", procFD(fds.add(s.Kernel.File)))
		if s.Initrd != nil {
			a("-initrd", procFD(fds.add(s.Initrd.File)))
		}
		if s.Cmdline != "" {
			a("-append", s.Cmdline)
		}
	}
	a("-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", qmpFD))
	a("-mon", "chardev=qmp,mode=control")
	if s.Console {
		a("-chardev", "file,id=console0,path="+qemuOptEscape(filepath.Join(s.Runtime.Dir, ConsoleLogName)))
		a("-device", mustJSON(device{"driver": "isa-serial", "chardev": "console0", "id": "serial0"}))
	}

	for i, d := range s.Disks {
		file := fmt.Sprintf("disk%d-file", i)
		node := fmt.Sprintf("disk%d", i)
		// QEMU opens the disk only through the descriptors snpd opened and checked
		// (fdset i): never by path. Tests without files get the same shape.
		files := d.Files
		if len(files) == 0 {
			files = []*os.File{nil}
			if !d.ReadOnly {
				files = append(files, nil)
			}
		}
		for _, f := range files {
			a("-add-fd", fmt.Sprintf("fd=%d,set=%d,opaque=%s", fds.add(f), i, node))
		}
		a("-blockdev", mustJSON(blockdevFile{Driver: "file", Filename: fmt.Sprintf("/dev/fdset/%d", i), NodeName: file, ReadOnly: d.ReadOnly}))
		a("-blockdev", mustJSON(blockdevFormat{NodeName: node, ReadOnly: d.ReadOnly, Driver: d.Format, File: file, backing: d.Format == "qcow2"}))
		a("-device", mustJSON(virtioDevice("virtio-blk-pci-non-transitional", device{"drive": node, "id": node})))
	}
	for i, n := range s.Networks {
		id := fmt.Sprintf("net%d", i)
		nd := device{"type": n.Type, "id": id}
		if n.Type == "tap" {
			// No helper scripts: QEMU must never run a program.
			nd["ifname"], nd["script"], nd["downscript"] = n.Tap, "no", "no"
		}
		a("-netdev", mustJSON(nd))
		dev := virtioDevice("virtio-net-pci-non-transitional", device{"netdev": id, "id": id})
		if n.MAC != "" {
			dev["mac"] = n.MAC
		}
		a("-device", mustJSON(dev))
	}
	if s.AgentSerial {
		agentFD := fds.add(s.Runtime.Agent)
		a("-device", mustJSON(virtioDevice("virtio-serial-pci-non-transitional", device{"id": "virtio-serial0"})))
		a("-chardev", fmt.Sprintf("socket,id=agent0,fd=%d,server=on,wait=off", agentFD))
		a("-device", mustJSON(device{"driver": "virtserialport", "bus": "virtio-serial0.0", "chardev": "agent0", "name": AgentPortName, "id": "agent0"}))
	}
	if s.VsockCID != 0 {
		a("-device", mustJSON(virtioDevice("vhost-vsock-pci", device{"id": "vsock0", "guest-cid": s.VsockCID})))
	}
	return args, fds.files
}

// virtioDevice completes a virtio PCI device. Every virtio device is modern-only
// (non-transitional) with iommu_platform on, on both platforms: QEMU forces exactly
// that for confidential guests (machine_run_board_init registers disable-legacy=on and
// iommu_platform=on when confidential-guest-support is set), so stating it keeps the
// SNP and "none" machines identical, PCI ids included.
func virtioDevice(driver string, d device) device {
	d["driver"] = driver
	d["iommu_platform"] = true
	return d
}

func fileOf(s *SealedFile) *os.File {
	if s == nil {
		return nil
	}
	return s.File
}

func procFD(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// PCIDevice is a PCI function's identity as query-pci reports it.
type PCIDevice struct {
	// Vendor and Device are the PCI vendor and device ids (0x1af4 and 0x1041... for
	// modern virtio).
	Vendor, Device uint16
}

// PCI ids of the devices BuildArgv adds: modern virtio ids, 0x1040 + virtio device type
// (virtio 1.x spec, 4.1.2.1).
var (
	pciVirtioNet    = PCIDevice{0x1af4, 0x1041}
	pciVirtioBlk    = PCIDevice{0x1af4, 0x1042}
	pciVirtioSerial = PCIDevice{0x1af4, 0x1043}
	pciVhostVsock   = PCIDevice{0x1af4, 0x1053}
)

// ExpectedPCIDevices is the multiset of PCI devices the spec adds on top of the q35 base
// machine (which brings its host bridge, ISA bridge, SATA and SMBus controllers).
func (s *Spec) ExpectedPCIDevices() map[PCIDevice]int {
	m := map[PCIDevice]int{}
	for range s.Disks {
		m[pciVirtioBlk]++
	}
	for range s.Networks {
		m[pciVirtioNet]++
	}
	if s.AgentSerial {
		m[pciVirtioSerial]++
	}
	if s.VsockCID != 0 {
		m[pciVhostVsock]++
	}
	return m
}

// recordedDevices decodes the JSON -device arguments of a launch record's QEMU argv.
func recordedDevices(argv []string) []map[string]any {
	var out []map[string]any
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] != "-device" || !strings.HasPrefix(argv[i+1], "{") {
			continue
		}
		var dev map[string]any
		if json.Unmarshal([]byte(argv[i+1]), &dev) == nil {
			out = append(out, dev)
		}
	}
	return out
}

// recordedCID returns the vsock guest CID in a launch record's QEMU argv (0: none): the
// CID snpd actually launched the VM with, not what its definition says now.
func recordedCID(argv []string) uint32 {
	for _, d := range recordedDevices(argv) {
		if d["driver"] == "vhost-vsock-pci" {
			if cid, ok := d["guest-cid"].(float64); ok && cid > 2 && cid < 0xFFFFFFFF {
				return uint32(cid)
			}
		}
	}
	return 0
}

// hasSerialAgent tells whether a launch record's QEMU argv has the agent's
// virtio-serial port.
func hasSerialAgent(argv []string) bool {
	for _, d := range recordedDevices(argv) {
		if d["driver"] == "virtserialport" && d["name"] == AgentPortName {
			return true
		}
	}
	return false
}

// RecordedChannel reads the guest channel snpd actually launched a VM with from its
// launch record's QEMU argv (BuildArgv's output), not from what its definition says now:
// serial tells whether it has the agent's virtio-serial port, cid is its vsock guest
// CID (0: none).
func RecordedChannel(argv []string) (serial bool, cid uint32) {
	return hasSerialAgent(argv), recordedCID(argv)
}
