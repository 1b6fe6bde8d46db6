// Package launch computes the launch digest the AMD Secure Processor produces for a
// guest: OVMF parsing (metadata sections, SEV hashes table), the page updates of
// SNP_LAUNCH_UPDATE, VMSA pages per vCPU and CPU model, kernel hashes, and the SEV and
// SEV-ES measurements too. It imports only the standard library, so tools that measure
// (snpctl measure) need nothing of go-sev-guest; package snp builds ID blocks, reference
// values and report checks on its Measurement.
package launch
