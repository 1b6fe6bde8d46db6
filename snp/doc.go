// Package snp is everything SEV-SNP and nothing about QEMU: the launch digest (firmware
// parsing, VMSA, kernel hashes, SEV and SEV-ES too), ID block and ID auth, policy types,
// report verification (wrapping go-sev-guest) and reference-value exports.
package snp
