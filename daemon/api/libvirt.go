package api

import "net/url"

// The libvirt hook's endpoints (snpctl libvirt-hook is the client):
//
//	POST   /v1/libvirt/domains         body LibvirtDomainRequest
//	       200 LibvirtDomainResponse   the domain conforms; snpd recorded its expected digest
//	       422 PolicyViolations        the domain breaks the host policy (Kind "policy")
//	       400 Error                   the XML cannot be mapped (Kind "invalid")
//	DELETE /v1/libvirt/domains/{name}
//	       204 (or 200)                registration dropped; 404 Error when none existed
const LibvirtDomainsPath = "/v1/libvirt/domains"

// LibvirtDomainPath is the path of one registered libvirt domain.
func LibvirtDomainPath(name string) string { return LibvirtDomainsPath + "/" + url.PathEscape(name) }

// LibvirtDomainRequest is the body of POST /v1/libvirt/domains: a domain libvirt is
// about to start (the hook's "prepare begin").
type LibvirtDomainRequest struct {
	// Name is the domain name libvirt passed to the hook (argv[1]).
	Name string `json:"name"`
	// XML is the full domain XML libvirt gave the hook on stdin (at most 1 MiB).
	XML string `json:"xml"`
}

// LibvirtDomainResponse is the 200 answer to POST /v1/libvirt/domains.
type LibvirtDomainResponse struct {
	// Name echoes the domain name.
	Name string `json:"name"`
	// ExpectedDigest is the SEV-SNP launch digest (48 bytes, hex) snpd expects for a
	// domain with <launchSecurity type='sev-snp'>. Empty for any other domain: it is not
	// confidential and has no SNP launch digest. On platform "none" a sev-snp domain's
	// digest is computed for reference, as for snpd's own VMs there.
	ExpectedDigest string `json:"expected_digest,omitempty"`
	// Note is NotConfidential when the domain will run without SEV-SNP (no sev-snp
	// launchSecurity, or platform "none"); empty for a confidential domain.
	Note string `json:"note,omitempty"`
}

// Violation is one broken host-policy rule (config.Violation on the wire).
type Violation struct {
	// Rule names the rule as in policy.toml, e.g. "snp.forbid_debug".
	Rule string `json:"rule"`
	// Value is the offending value, e.g. "0xb0000".
	Value string `json:"value"`
	// Message is one line naming the value.
	Message string `json:"message"`
}

// PolicyViolations is the 422 body when a definition or libvirt domain breaks the host
// policy: the usual Error fields (Kind "policy") plus every violation, in the policy's
// order.
type PolicyViolations struct {
	Kind       string      `json:"kind"`
	Message    string      `json:"error"`
	Violations []Violation `json:"violations"`
}
