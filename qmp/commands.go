package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Typed commands for QEMU >= 9.1. The structs follow the QAPI schema of QEMU 10.0
// (qapi/control.json, qapi/run-state.json, qapi/misc-target.json, qapi/machine.json,
// qapi/pci.json, qapi/qom.json); the integration test checks every member name against
// the real binary's query-qmp-schema. Members QEMU may omit are pointers or omitempty.

// VersionTriple is a QEMU version number.
type VersionTriple struct {
	// Major, Minor and Micro as in "10.0.2".
	Major int `json:"major"`
	Minor int `json:"minor"`
	Micro int `json:"micro"`
}

// VersionInfo is query-version's reply (qapi/control.json).
type VersionInfo struct {
	QEMU VersionTriple `json:"qemu"`
	// Package is the distribution's package string, e.g. "Debian 1:10.0.2+ds-1~bpo12+1".
	Package string `json:"package"`
}

// String returns "major.minor.micro".
func (v VersionInfo) String() string {
	return fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro)
}

// AtLeast reports whether the version is major.minor or newer.
func (v VersionInfo) AtLeast(major, minor int) bool {
	return v.QEMU.Major > major || (v.QEMU.Major == major && v.QEMU.Minor >= minor)
}

// QueryVersion runs query-version.
func (c *Client) QueryVersion(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := c.Execute(ctx, "query-version", nil, &v)
	return v, err
}

// RunState values of StatusInfo.Status (qapi/run-state.json) that snpd acts on.
const (
	RunStatePrelaunch     = "prelaunch" // started with -S, never run
	RunStatePaused        = "paused"    // stopped by stop (or -S after a run)
	RunStateRunning       = "running"
	RunStateShutdown      = "shutdown"
	RunStateGuestPanicked = "guest-panicked"
	RunStateInternalError = "internal-error"
)

// StatusInfo is query-status's reply.
type StatusInfo struct {
	// Running is true when the vCPUs run.
	Running bool `json:"running"`
	// Status is the RunState, e.g. RunStatePrelaunch.
	Status string `json:"status"`
}

// QueryStatus runs query-status.
func (c *Client) QueryStatus(ctx context.Context) (StatusInfo, error) {
	var s StatusInfo
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// SEV guest types of SevInfo.SevType (SevGuestType, qapi/misc-target.json).
const (
	SevTypeSEV = "sev"
	SevTypeSNP = "sev-snp"
)

// SevInfo is query-sev's reply, a QAPI union on sev-type: Policy and Handle are set for
// "sev" (SEV and SEV-ES), SNPPolicy for "sev-snp". On a VM without SEV, QEMU 10.0
// answers Enabled false, State "uninit" and the "sev" arm with zeros.
type SevInfo struct {
	// Enabled is true when memory encryption is active.
	Enabled bool `json:"enabled"`
	// APIMajor, APIMinor and BuildID are the SEV firmware's version.
	APIMajor uint8 `json:"api-major"`
	APIMinor uint8 `json:"api-minor"`
	BuildID  uint8 `json:"build-id"`
	// State is the SevState: "uninit", "launch-update", "launch-secret", "running",
	// "send-update", "receive-update".
	State string `json:"state"`
	// SevType is SevTypeSEV or SevTypeSNP.
	SevType string `json:"sev-type"`

	// Policy is the SEV/SEV-ES guest policy (32 bits); nil for SNP.
	Policy *uint32 `json:"policy,omitempty"`
	// Handle is the SEV guest handle; nil for SNP.
	Handle *uint32 `json:"handle,omitempty"`
	// SNPPolicy is the SEV-SNP guest policy (64 bits, SNP firmware ABI "GUEST_POLICY");
	// nil for SEV and SEV-ES.
	SNPPolicy *uint64 `json:"snp-policy,omitempty"`
}

// QuerySEV runs query-sev.
func (c *Client) QuerySEV(ctx context.Context) (SevInfo, error) {
	var s SevInfo
	err := c.Execute(ctx, "query-sev", nil, &s)
	return s, err
}

// SevCapability is query-sev-capabilities's reply: the host platform's SEV parameters.
type SevCapability struct {
	// PDH is the platform Diffie-Hellman key, base64.
	PDH string `json:"pdh"`
	// CertChain is the PDH certificate chain, base64.
	CertChain string `json:"cert-chain"`
	// CPU0ID is the unique ID of CPU0, base64.
	CPU0ID string `json:"cpu0-id"`
	// CBitPos is the C-bit position in a page table entry.
	CBitPos int `json:"cbitpos"`
	// ReducedPhysBits is how many physical address bits encryption takes away.
	ReducedPhysBits int `json:"reduced-phys-bits"`
}

// QuerySEVCapabilities runs query-sev-capabilities. On a host without SEV it fails with
// a *Error (GenericError).
func (c *Client) QuerySEVCapabilities(ctx context.Context) (SevCapability, error) {
	var s SevCapability
	err := c.Execute(ctx, "query-sev-capabilities", nil, &s)
	return s, err
}

// CPUInstanceProperties locate a vCPU in the topology (qapi/machine.json); nil members
// are not applicable to the machine.
type CPUInstanceProperties struct {
	// Each is a 0-based index at its topology level.
	NodeID    *int `json:"node-id,omitempty"`
	DrawerID  *int `json:"drawer-id,omitempty"`
	BookID    *int `json:"book-id,omitempty"`
	SocketID  *int `json:"socket-id,omitempty"`
	DieID     *int `json:"die-id,omitempty"`
	ClusterID *int `json:"cluster-id,omitempty"`
	ModuleID  *int `json:"module-id,omitempty"`
	CoreID    *int `json:"core-id,omitempty"`
	ThreadID  *int `json:"thread-id,omitempty"`
}

// CPUInfoFast is one element of query-cpus-fast's reply.
type CPUInfoFast struct {
	// CPUIndex is the vCPU index (0-based).
	CPUIndex int `json:"cpu-index"`
	// QOMPath is the vCPU's QOM path.
	QOMPath string `json:"qom-path"`
	// ThreadID is the host thread id running the vCPU.
	ThreadID int `json:"thread-id"`
	// Props is the topology location; nil when the machine has none.
	Props *CPUInstanceProperties `json:"props,omitempty"`
	// Target is the QEMU target, "x86_64" here.
	Target string `json:"target"`
}

// QueryCPUsFast runs query-cpus-fast.
func (c *Client) QueryCPUsFast(ctx context.Context) ([]CPUInfoFast, error) {
	var s []CPUInfoFast
	err := c.Execute(ctx, "query-cpus-fast", nil, &s)
	return s, err
}

// MemoryInfo is query-memory-size-summary's reply.
type MemoryInfo struct {
	// BaseMemory is the boot memory size in bytes (-m).
	BaseMemory uint64 `json:"base-memory"`
	// PluggedMemory is hot-plugged memory in bytes; nil when the machine has no
	// memory-hotplug support.
	PluggedMemory *uint64 `json:"plugged-memory,omitempty"`
}

// QueryMemorySizeSummary runs query-memory-size-summary.
func (c *Client) QueryMemorySizeSummary(ctx context.Context) (MemoryInfo, error) {
	var m MemoryInfo
	err := c.Execute(ctx, "query-memory-size-summary", nil, &m)
	return m, err
}

// PCIInfo is one PCI bus of query-pci's reply (qapi/pci.json).
type PCIInfo struct {
	// Bus is the bus number.
	Bus int `json:"bus"`
	// Devices are the functions on the bus; those behind bridges are nested in
	// PCIDeviceInfo.PCIBridge.
	Devices []PCIDeviceInfo `json:"devices"`
}

// PCIDeviceClass is a device's class code.
type PCIDeviceClass struct {
	// Desc is QEMU's name for the class; empty when unknown.
	Desc string `json:"desc,omitempty"`
	// Class is the 16-bit class code (base class << 8 | subclass).
	Class int `json:"class"`
}

// PCIDeviceID is a device's vendor/device (and subsystem) ids.
type PCIDeviceID struct {
	// Device and Vendor are the 16-bit PCI ids.
	Device int `json:"device"`
	Vendor int `json:"vendor"`
	// Subsystem and SubsystemVendor are nil when the function has none (bridges).
	Subsystem       *int `json:"subsystem,omitempty"`
	SubsystemVendor *int `json:"subsystem-vendor,omitempty"`
}

// PCIMemoryRange is an address window; Base and Limit are guest-physical addresses.
type PCIMemoryRange struct {
	Base  int64 `json:"base"`
	Limit int64 `json:"limit"`
}

// PCIMemoryRegion is one BAR.
type PCIMemoryRegion struct {
	// Bar is the BAR index (0-5, 6 for the expansion ROM).
	Bar int `json:"bar"`
	// Type is "io" or "memory".
	Type string `json:"type"`
	// Address is the BAR's guest-physical (or I/O port) address.
	Address int64 `json:"address"`
	// Size is in bytes.
	Size int64 `json:"size"`
	// Prefetch and MemType64 are set for memory BARs only; nil for I/O BARs.
	Prefetch  *bool `json:"prefetch,omitempty"`
	MemType64 *bool `json:"mem_type_64,omitempty"`
}

// PCIBusInfo describes the bus behind a bridge.
type PCIBusInfo struct {
	// Number, Secondary and Subordinate are the bridge's bus numbers.
	Number      int `json:"number"`
	Secondary   int `json:"secondary"`
	Subordinate int `json:"subordinate"`
	// IORange, MemoryRange and PrefetchableRange are the windows it forwards.
	IORange           PCIMemoryRange `json:"io_range"`
	MemoryRange       PCIMemoryRange `json:"memory_range"`
	PrefetchableRange PCIMemoryRange `json:"prefetchable_range"`
}

// PCIBridgeInfo is a bridge and the devices behind it.
type PCIBridgeInfo struct {
	// Bus is the secondary bus.
	Bus PCIBusInfo `json:"bus"`
	// Devices are the functions behind the bridge; nil when none.
	Devices []PCIDeviceInfo `json:"devices,omitempty"`
}

// PCIDeviceInfo is one PCI function.
type PCIDeviceInfo struct {
	// Bus, Slot and Function are the function's PCI address.
	Bus      int `json:"bus"`
	Slot     int `json:"slot"`
	Function int `json:"function"`
	// ClassInfo and ID identify the function.
	ClassInfo PCIDeviceClass `json:"class_info"`
	ID        PCIDeviceID    `json:"id"`
	// IRQ is the legacy interrupt line; nil when none.
	IRQ *int `json:"irq,omitempty"`
	// IRQPin is 0 (none) or 1-4 (INTA-INTD).
	IRQPin int `json:"irq_pin"`
	// QdevID is the device's -device id=; empty when it has none.
	QdevID string `json:"qdev_id"`
	// PCIBridge is set for bridges; nil otherwise.
	PCIBridge *PCIBridgeInfo `json:"pci_bridge,omitempty"`
	// Regions are the function's BARs.
	Regions []PCIMemoryRegion `json:"regions"`
}

// QueryPCI runs query-pci.
func (c *Client) QueryPCI(ctx context.Context) ([]PCIInfo, error) {
	var s []PCIInfo
	err := c.Execute(ctx, "query-pci", nil, &s)
	return s, err
}

// ObjectPropertyInfo describes one QOM property (qapi/qom.json).
type ObjectPropertyInfo struct {
	// Name is the property name, e.g. "policy".
	Name string `json:"name"`
	// Type is the property type: a QAPI/QOM type name such as "uint64", "str", "bool",
	// or "child<...>"/"link<...>".
	Type string `json:"type"`
	// Description is QEMU's help text; empty when none.
	Description string `json:"description,omitempty"`
	// DefaultValue is the raw JSON default; nil when QEMU reports none.
	DefaultValue json.RawMessage `json:"default-value,omitempty"`
}

// QOMGet runs qom-get for property on the object at path and decodes the value into out
// (a pointer; use *any for an unknown type).
func (c *Client) QOMGet(ctx context.Context, path, property string, out any) error {
	args := struct {
		Path     string `json:"path"`
		Property string `json:"property"`
	}{path, property}
	return c.Execute(ctx, "qom-get", args, out)
}

// QOMList runs qom-list: the properties (including children and links) of the object at
// path.
func (c *Client) QOMList(ctx context.Context, path string) ([]ObjectPropertyInfo, error) {
	args := struct {
		Path string `json:"path"`
	}{path}
	var s []ObjectPropertyInfo
	err := c.Execute(ctx, "qom-list", args, &s)
	return s, err
}

// QOMListProperties runs qom-list-properties: the properties objects of typename have
// (e.g. "sev-snp-guest"), without creating one.
func (c *Client) QOMListProperties(ctx context.Context, typename string) ([]ObjectPropertyInfo, error) {
	args := struct {
		Typename string `json:"typename"`
	}{typename}
	var s []ObjectPropertyInfo
	err := c.Execute(ctx, "qom-list-properties", args, &s)
	return s, err
}

// Cont runs cont: resume (or first start) the vCPUs. For an SNP guest this is where
// SNP_LAUNCH_FINISH happens.
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// Stop runs stop: pause the vCPUs.
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// SystemPowerdown runs system_powerdown: ask the guest to power off (ACPI button).
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit runs quit: QEMU exits. QEMU may close the connection before or right after the
// reply; a connection that ends instead of replying counts as success.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if err != nil && errors.Is(c.Err(), ErrDisconnected) {
		// QEMU went away (EOF) while we waited: that is what quit asked for.
		return nil
	}
	return err
}
