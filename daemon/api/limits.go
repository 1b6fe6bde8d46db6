package api

// Sizes and names the API carries, declared here as well as in the packages that own them
// (snp, config) so that a client can check its input before sending it without linking
// those packages: package snp brings go-sev-guest and protobuf, config brings go-toml and
// libvirtxml, and their package initialisation alone costs snpctl about a millisecond per
// call. daemon's TestAPILimitsMatchOwners fails if a copy drifts from its owner.
const (
	// MaxDefinitionSize bounds a VM definition's TOML in bytes (config.MaxFileSize, 1 MiB).
	MaxDefinitionSize = 1 << 20
	// ReportSize is an SEV-SNP attestation report's size in bytes (snp.ReportSize, 1184).
	ReportSize = 1184
	// MaxCertTableSize bounds a certificate table, or one certificate file, in bytes
	// (snp.MaxCertTableSize, 64 KiB).
	MaxCertTableSize = 64 << 10
	// ReferenceFormatJSON is the default reference format (snp.FormatJSON).
	ReferenceFormatJSON = "json"
)

// ReferenceFormats are the formats ReferencePath accepts (snp.ReferenceFormats).
var ReferenceFormats = []string{ReferenceFormatJSON, "trustee", "sev-guest-check", "launch-log"}
