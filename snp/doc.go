// Package snp is everything SEV-SNP and nothing about QEMU: ID block and ID auth, policy
// types, report verification (wrapping go-sev-guest) and reference-value exports. The
// launch digest itself lives in package snp/launch.
package snp
